"""The fake Slack lives in the package (``daemon.fake_slack``) so that
``mlwatchd soak`` can use it too; tests keep importing it from here."""

from daemon.fake_slack import (
    WEBHOOK_ERROR_STATUS,
    Endpoint,
    FakeSlack,
    FaultMode,
    Reply,
    SlackRequest,
)

__all__ = ["WEBHOOK_ERROR_STATUS", "Endpoint", "FakeSlack", "FaultMode", "Reply", "SlackRequest"]
