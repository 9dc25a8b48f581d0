"""Playbooks are checked at load: one clear line per problem; shipped defaults are sound."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from pb_helpers import write_playbooks
from pydantic import SecretStr

import playbooks.config
import playbooks.interactivity
import playbooks.render
import playbooks.templates
from detectors.findings import KINDS
from playbooks.actions import ACTION_TYPES
from playbooks.config import PlaybookSettings, SlackConnection, default_playbook_dir
from playbooks.model import PlaybookError, load_playbooks

BROKEN = """
actions:
  chat: {type: slack, params: {link: "https://d.example.com/?x={entity.name}"}}
  sms: {type: sms}
  throttle: {type: kafka, params: {action: revoke_key, ttl: 1h}}
  typo: {type: kafka, params: {action: rate_limit, ttl: soon}}
  hook: {type: webhook, params: {url: "https://h.example.com/", secret_env: PB_UNSET_SECRET}}
  page: {type: pagerduty, params: {routing_key_env: PB_UNSET_KEY}}
  flag: {type: log, params: {level: loud}}
routes:
  - name: a
    match: {kinds: [model_extraction, mind_control], min_severity: severe}
    actions: [chat]
  - name: b
    match: {kinds: [drift]}
    actions: [chat, missing]
    mitigations: [AML.T0024]
    escalation: {after: 5m, route: nowhere}
  - name: b
    actions: [chat]
    dedup: {key: "{kind"}
"""


def test_every_problem_is_one_line_naming_file_place_and_cause(tmp_path, monkeypatch):
    monkeypatch.delenv("PB_UNSET_SECRET", raising=False)
    monkeypatch.delenv("PB_UNSET_KEY", raising=False)
    with pytest.raises(PlaybookError) as err:
        write_playbooks(tmp_path, BROKEN)
    problems = err.value.problems
    assert all("\n" not in p and p.startswith("test.yaml: ") for p in problems), problems
    expected = [
        "actions.chat.params.link: unknown template variable {entity.name}",
        "actions.sms.type: unknown action type 'sms'; known: slack, webhook, kafka, pagerduty",
        "actions.throttle.params: revoke_key cannot be reverted: drop ttl",
        "actions.typo.params.ttl: not a duration: 'soon'",
        "actions.hook.params: secret: environment variable PB_UNSET_SECRET is not set",
        "actions.page.params: routing_key: environment variable PB_UNSET_KEY is not set",
        "actions.flag.params.level: Input should be 'info', 'warning' or 'error'",
        "routes[0] (a).match.kinds: unknown kind mind_control",
        "routes[0] (a).match.min_severity: Input should be",
        "routes[1] (b).mitigations: not an ATLAS mitigation id (AML.M0000): AML.T0024",
        "routes[2] (b).dedup.key: stray '{'",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected)


def test_cross_references_are_checked(tmp_path):
    with pytest.raises(PlaybookError) as err:
        write_playbooks(tmp_path, """
        actions:
          chat: {type: slack}
        routes:
          - {name: a, match: {}, actions: [chat, missing], escalation: {after: 1m, route: z}}
          - {name: a, actions: [chat]}
        """)
    assert err.value.problems == [
        "test.yaml: routes (a).actions: unknown action 'missing'",
        "test.yaml: routes (a): duplicate route name (also in test.yaml)",
        "test.yaml: routes (a).escalation.route: unknown route 'z'",
    ]


def test_unreadable_yaml_and_missing_folder(tmp_path):
    (tmp_path / "bad.yaml").write_text("routes: [\n")
    with pytest.raises(PlaybookError) as err:
        load_playbooks(tmp_path)
    assert err.value.problems[0].startswith("bad.yaml: line")
    with pytest.raises(PlaybookError) as err:
        load_playbooks(tmp_path / "nope")
    assert "playbook folder not found" in err.value.problems[0]


def test_shipped_playbooks_load_cover_every_kind_and_contain_only_with_approval():
    loaded = load_playbooks(default_playbook_dir())
    covered = {k for r in loaded.routes if r.spec.match for k in r.spec.match.kinds}
    assert covered >= KINDS
    for bound in loaded.actions.values():
        if bound.action.name == "kafka":
            assert bound.requires_approval, bound.name
    cited = {m for r in loaded.routes for m in r.spec.mitigations}
    assert {"AML.M0004", "AML.M0015", "AML.M0019", "AML.M0024"} <= cited
    assert loaded.routes[-1].name == "catch-all"


def test_every_action_type_describes_itself_and_its_example_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("MLWATCHD_SOAR_URL", "https://soar.example.com/hook")
    monkeypatch.setenv("MLWATCHD_SOAR_SECRET", "x")
    monkeypatch.setenv("MLWATCHD_PD_ROUTING_KEY", "k")
    monkeypatch.setenv("MLWATCHD_SIEM_URL", "https://siem.example.com/services/collector/raw")
    monkeypatch.setenv("MLWATCHD_SIEM_SECRET", "x")
    monkeypatch.setenv("MLWATCHD_SIEM_AUTH", "Splunk 0000")
    names = []
    for kind in ACTION_TYPES:
        assert kind.name and kind.category and kind.description and kind.example
        example = "actions:\n" + "\n".join("  " + line for line in kind.example.splitlines())
        (tmp_path / f"{kind.name}.yaml").write_text(example)
        names.append(kind.name)
    loaded = load_playbooks(tmp_path)
    assert sorted(b.action.name for b in loaded.actions.values()) == sorted(names)


def test_settings_defaults_secrets_and_slack_connection(tmp_path):
    settings = PlaybookSettings()
    assert settings.actions_topic == "mlwatchd.actions" and settings.audit_topic == "mlwatchd.audit"
    assert settings.dir == default_playbook_dir() and not settings.dry_run
    secret_file = tmp_path / "signing"
    secret_file.write_text("abc123\n")
    on = PlaybookSettings.model_validate(
        {"interactivity": {"enabled": True, "signing_secret_file": str(secret_file)}})
    assert on.interactivity.signing_secret.get_secret_value() == "abc123"
    assert "abc123" not in repr(on)
    with pytest.raises(ValueError, match="signing_secret"):
        PlaybookSettings.model_validate({"interactivity": {"enabled": True}})
    with pytest.raises(ValueError, match="extra"):
        PlaybookSettings.model_validate({"dry-run": True})

    class DaemonSlack:  # the shape of daemon.settings.SlackSettings
        webhook_url = None
        bot_token = SecretStr("xoxb-1")
        channel = "#sec"
        api_base_url = "http://127.0.0.1:1/api/"
        timeout_s = 3.0
        max_retries = 2

    conn = SlackConnection.from_settings(DaemonSlack())
    assert conn is not None and conn.bot_token == "xoxb-1" and conn.channel == "#sec"
    assert "xoxb" not in repr(conn)
    assert SlackConnection.from_settings({"webhook_url": None, "bot_token": None}) is None


@pytest.mark.parametrize("module", [playbooks.templates, playbooks.config,
                                    playbooks.interactivity, playbooks.render])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_config_folder_is_yaml_only():
    assert all(p.suffix == ".yaml" for p in Path(default_playbook_dir()).iterdir())


def test_warnings_say_what_cannot_work_with_this_config():
    from playbooks.engine import playbook_warnings

    loaded = load_playbooks(default_playbook_dir())
    lines = playbook_warnings(loaded, PlaybookSettings(), slack_configured=False,
                              publisher=True)
    assert lines[0] == "slack actions are skipped: slack is not configured"
    assert "will never run" in lines[1]
    lines = playbook_warnings(loaded, PlaybookSettings(dry_run=True), slack_configured=True)
    assert any("interactivity is off" in line for line in lines)
    assert lines[-1].startswith("playbooks.dry_run is on")
