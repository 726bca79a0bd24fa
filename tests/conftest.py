"""Shared fixtures, and the fast tier: `python -m pytest -q -m "not slow" tests` skips the long runs below."""

import os

import pytest

from tests.helpers import MEANS, make_latent_dir

# One evaluation classifier per accuracy instead of three: the tests check what the metrics do, and each fit
# costs seconds (test_evaluate checks the averaging itself). Inherited by the subprocesses the tests start.
os.environ.setdefault("MICRODOPPLER_CLASSIFIER_SEEDS", "1")

# Whole files of trainings, subprocesses and classifier fits, and single long tests elsewhere.
SLOW_FILES = {"test_faults.py", "test_stage3.py", "test_evaluate.py"}
SLOW_TESTS = {"test_tiny_model_learns_class_means", "test_two_process_gloo_ddp", "test_non_finite_loss_stops_with_checkpoint",
              "test_sigterm_writes_a_checkpoint_and_stops", "test_time_budget_stops_cleanly",
              "test_two_ranks_encode_disjoint_shards_and_match_one_process", "test_bad_inputs_exit_2",
              "test_bad_inputs_are_one_line_errors_with_exit_code_2",
              "test_auto_keeps_the_images_own_size_only_where_the_tokenizer_keeps_the_classes"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long CPU runs (trainings, subprocesses, torchrun); deselect with "
                                       "-m 'not slow' for the fast tier")


def pytest_collection_modifyitems(items):
    for item in items:
        if os.path.basename(str(item.fspath)) in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def latent_dir(tmp_path_factory):
    """A two-class latent dir (tests.helpers.MEANS, 4x4x4 latents) shared by the stage 2 and fault tests."""
    path = tmp_path_factory.mktemp("latents")
    make_latent_dir(path, MEANS)
    return path
