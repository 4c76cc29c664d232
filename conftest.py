"""Test-suite settings, shared by the unit tests and the notebooks that nbval runs.

Before any test or notebook kernel starts, this points the course at a fresh temporary folder
for downloads, outputs and models (so a run behaves like a clean clone), sets COURSE_FAST=1 so
each notebook's settings cell picks its small test settings, and primes tiktoken's cache from the
data mirror (COURSE_DATA_MIRROR) when it holds GPT-2's tokenizer files, so no network is needed.
Notebook kernels inherit these environment variables.

The fuzzed sweeps (tests/test_fuzz_*.py, hypothesis) run under one of two profiles: "ci" (the
default: a bounded number of examples per helper, a few seconds each) or "nightly" (many more),
chosen with HYPOTHESIS_PROFILE=nightly. Examples are drawn from a new random seed each run,
FUZZ_SEED, printed at the top of the run and with any failing example; FUZZ_SEED=N repeats a run.
"""

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# deadline=None: a slow example on a loaded machine is not a failure; max_examples bounds time.
settings.register_profile("ci", max_examples=60, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=2000, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
os.environ.setdefault("FUZZ_SEED", str(random.SystemRandom().getrandbits(32)))  # tests/fuzzing.py

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only
SESSION_DIR = Path(tempfile.mkdtemp(prefix="course-tests-"))


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads --hypothesis-seed
def pytest_configure(config):
    # every hypothesis test draws from FUZZ_SEED (or the --hypothesis-seed given)
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = os.environ["FUZZ_SEED"]
    else:
        os.environ["FUZZ_SEED"] = str(config.getoption("hypothesis_seed"))
    atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)
    os.environ["COURSE_FAST"] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    for var, sub in [("COURSE_DATA_DIR", "data"), ("COURSE_OUTPUT_DIR", "outputs"),
                     ("COURSE_MODELS_DIR", "models"), ("TIKTOKEN_CACHE_DIR", "tiktoken")]:
        os.environ[var] = str(SESSION_DIR / sub)
        (SESSION_DIR / sub).mkdir(parents=True, exist_ok=True)
    import course_data

    course_data.get_gpt2_tokenizer()  # primes the cache from the mirror, or downloads once


def pytest_report_header(config):
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    return (f"fuzzed sweeps: hypothesis profile {profile!r} ({settings.default.max_examples} "
            f"examples per test), FUZZ_SEED={os.environ['FUZZ_SEED']} (set it to repeat this run)")


def pytest_sessionstart(session):
    """Notebooks 05-07 run, at test settings, on a tiny random GPT-2 checkpoint in OpenAI's
    layout, written by TensorFlow here: COURSE_MODELS_DIR/tiny-test."""
    from tests.tiny_checkpoint import write_tiny_checkpoint

    write_tiny_checkpoint(os.environ["COURSE_MODELS_DIR"], "tiny-test")


@pytest.fixture(scope="session")
def session_dir():
    """The temporary folder this test session uses for data, outputs and models."""
    return SESSION_DIR
