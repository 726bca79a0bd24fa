"""Shared fixtures."""

import pytest

from tests.helpers import MEANS, make_latent_dir


@pytest.fixture(scope="session")
def latent_dir(tmp_path_factory):
    """A two-class latent dir (tests.helpers.MEANS, 4x4x4 latents) shared by the stage 2 and fault tests."""
    path = tmp_path_factory.mktemp("latents")
    make_latent_dir(path, MEANS)
    return path
