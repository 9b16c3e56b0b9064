"""Finding the spools an app or a sender could be using (``rudder_fast.locate``), from the point of view
of any user: directories this user may not look into are passed over, never a crash (the sender runs this
at start, ``status`` and ``doctor`` every time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rudder_fast import Emitter, locate
from tests.support.processes import as_nobody


def test_a_spool_with_waiting_segments_is_found_and_the_examined_one_is_not(tmp_path: Path) -> None:
    app, examined = tmp_path / "app", tmp_path / "examined"
    Emitter(app).track(user_id="u", event="e")
    Emitter(examined).track(user_id="u", event="e")
    environ = {"RUDDER_FAST_SPOOL_DIR": str(app), "HOME": str(tmp_path / "home")}
    found = locate.other_spools(examined, environ)
    assert [a.spool_dir for a in found] == [app]
    assert found[0].segments == 1
    assert found[0].live_producers == 0  # the emitter above was closed when it was collected
    assert locate.other_spools(app, environ) == []


def test_known_directories_include_the_variable_the_system_default_and_users_homes() -> None:
    dirs = locate.known_spool_dirs({"RUDDER_FAST_SPOOL_DIR": "/srv/x"})
    assert dirs[0] == Path("/srv/x")
    assert Path("/var/spool/rudder-fast") in dirs
    assert Path("/root/.local/state/rudder-fast/spool") in dirs
    assert len(dirs) == len(set(dirs))


def test_directories_another_user_may_not_read_are_passed_over(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    private = tmp_path / "private-spool"
    Emitter(private).track(user_id="u", event="e")  # 0700, root's
    script = (
        "import sys; from pathlib import Path; from rudder_fast import locate; "
        "print(locate.probe(Path(sys.argv[1])), locate.other_spools(Path('/nonexistent'), "
        "{'RUDDER_FAST_SPOOL_DIR': sys.argv[1]}))"
    )
    proc = subprocess.run(
        as_nobody([sys.executable, "-c", script, str(private)]),
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None []"
