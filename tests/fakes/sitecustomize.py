"""Run at start-up by a Python process with tests/fakes on PYTHONPATH: installs what its environment
asks for (:mod:`tests.fakes`), and nothing otherwise."""

import os

if os.environ.get("DFK_FAKE_QUALITY"):
    from tests.fakes import install_from_environment

    install_from_environment()
if os.environ.get("DFK_FIRST_TRIALS"):
    from tests.fakes import install_first_trial_rendezvous

    install_first_trial_rendezvous()
