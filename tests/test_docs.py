"""The README stays true: every setting is documented, and CI runs the README's test command."""

from __future__ import annotations

from pathlib import Path

from nbpool.embedded import UpSettings
from nbpool.settings import CullerSettings, GatewaySettings, RouterSettings, SpawnerSettings

ROOT = Path(__file__).parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for cls in (GatewaySettings, SpawnerSettings, RouterSettings, CullerSettings, UpSettings):
        for name in cls.model_fields:
            assert f"`NBPOOL_{name.upper()}`" in readme, f"NBPOOL_{name.upper()} is missing from the README"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
