"""Content profiles' images: ``nbpool profile build`` and ``nbpool up`` build them.

A profile with ``content`` (a folder, or ``PATH@REF`` of a local git repository) runs the image
``nbpool/profile-<name>:latest``, which deploy/images/build-profile.sh makes from the notebook
image (or the profile's ``image``), its requirements and its files. The script does the work and
says what it does; this module finds it, gives it the profile's settings and reports the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from nbpool.settings import Profile

__all__ = ["BuildFailed", "build_profile", "content_profiles", "images_script"]


class BuildFailed(Exception):
    """A profile's image did not build; the message says why (the script's last error line)."""


def images_script(name: str) -> Path | None:
    """deploy/images/``name`` of the checkout nbpool runs from (an editable install), if any."""
    path = Path(__file__).resolve().parent.parent / "deploy" / "images" / name
    return path if path.exists() else None


def content_profiles(profiles: Mapping[str, Profile]) -> dict[str, Profile]:
    """The profiles that have content, by name."""
    return {name: p for name, p in profiles.items() if p.content is not None}


def build_profile(name: str, profile: Profile, base: str | None = None) -> str:
    """Build (if its inputs changed) the image of profile ``name``; its tag.

    ``base`` is the image to build on when the profile names none (default: the notebook image,
    built if needed). Progress goes to this process's stderr. A relative ``content`` is taken
    from the current folder.
    """
    if profile.content is None:
        raise BuildFailed(f"profile {name} has no content: nothing to build")
    script = images_script("build-profile.sh")
    if script is None:
        raise BuildFailed("deploy/images/build-profile.sh is missing: content profiles are built from an nbpool checkout")
    args = [str(script), name, profile.content, *([profile.start] if profile.start else [])]
    run_env = dict(os.environ)
    chosen = profile.image or base
    if chosen:
        run_env["NBPOOL_PROFILE_BASE"] = chosen
    errors: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # the script's progress, shown as it comes
            sys.stderr.write(line)
            if "] error: " in line:
                errors.append(line.split("] error: ", 1)[1].strip())
        out = proc.stdout.read()
    if proc.returncode != 0:
        raise BuildFailed(errors[-1] if errors else f"build-profile.sh exited with status {proc.returncode}")
    return out.strip().splitlines()[-1]
