"""The %%arboris cell magic in a real IPython InteractiveShell (no kernel needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from arboris_nb import Run, SimulatedLLM, VersionsWidget, WriterSettings, simulated_judge


@pytest.fixture(scope="module")
def ipython(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """One shell for the module; history in memory, profile in a temp dir (not $HOME)."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    directory = str(tmp_path_factory.mktemp("ipython"))
    yield InteractiveShell.instance(config=config, ipython_dir=directory)
    InteractiveShell.clear_instance()


@pytest.fixture
def shell(ipython: InteractiveShell) -> Iterator[InteractiveShell]:
    ip = ipython
    ip.run_line_magic("load_ext", "arboris_nb")
    yield ip
    ip.run_line_magic("unload_ext", "arboris_nb")
    for name in [n for n in ip.user_ns if n.startswith("ch")]:
        del ip.user_ns[name]


@pytest.mark.looptime
async def test_magic_runs_the_cell_prompt_and_stores_the_run(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = shell.run_cell("%%arboris --simulated -n 2 -c 1 -o ch3\nWrite chapter 3.\n")
    assert result.success, result.error_in_exec
    widget = shell.user_ns["ch3_widget"]
    assert isinstance(widget, VersionsWidget) and "ch3" not in shell.user_ns
    assert "VersionsWidget(versions=2, model='simulated')" in capsys.readouterr().out
    assert widget.task is not None
    run = await widget.task
    assert shell.user_ns["ch3"] is run and isinstance(run, Run)
    assert [v.status for v in run.versions] == ["ok", "ok"]
    assert run.max_parallel_requests == 1 and run.parallel
    assert widget.prompt.value == "Write chapter 3."


@pytest.mark.looptime
async def test_serial_option(shell: InteractiveShell) -> None:
    shell.run_cell("%%arboris --simulated --serial -n 3 -o ch\nWrite.")
    run = await shell.user_ns["ch_widget"].task
    assert run.mode == "serial" and run.version_count == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("-n 11", "-n/--versions (WRITER_CHAPTER_VERSION_COUNT) must be from 1 to 10, got 11"),
        (
            "-n x",
            "-n/--versions (WRITER_CHAPTER_VERSION_COUNT) must be a whole number from 1 to 10",
        ),
        ("-c 0", "-c/--max-parallel (WRITER_MAX_PARALLEL_REQUESTS) must be from 1 to 10, got 0"),
        ("-o 3x", "-o/--output must be a Python name"),
        ("--base-url ftp://x", "base_url (OPENAI_API_BASE_URL) must start with http"),
        ("--bogus", "unrecognized arguments: --bogus"),
    ],
)
async def test_bad_options_are_clear_usage_errors(
    shell: InteractiveShell, options: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shell.run_cell_magic("arboris", options, "Write.")
    result = shell.run_cell(f"%%arboris {options}\nWrite.")  # shown, the shell lives on
    assert isinstance(result.error_in_exec, UsageError)


async def test_empty_cell_is_refused(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="the prompt"):
        shell.run_cell_magic("arboris", "--simulated", "   \n")


@pytest.mark.looptime
async def test_no_api_configured_falls_back_to_simulated_and_says_so(
    shell: InteractiveShell,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_API_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    shell.run_cell_magic("arboris", "-n 1 -o ch", "Write.")
    assert "using the offline simulated model" in capsys.readouterr().out
    widget = shell.user_ns["ch_widget"]
    assert isinstance(widget.llm, SimulatedLLM)
    assert (await widget.task).versions[0].ok


def test_magic_outside_a_running_loop_is_a_clear_error(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="running event loop"):
        shell.run_cell_magic("arboris", "--simulated", "Write.")


def test_unload_removes_the_magic(shell: InteractiveShell) -> None:
    assert "arboris" in shell.magics_manager.magics["cell"]
    shell.run_line_magic("unload_ext", "arboris_nb")
    assert "arboris" not in shell.magics_manager.magics["cell"]
    assert "arboris" not in shell.magics_manager.magics["line"]
    shell.run_line_magic("load_ext", "arboris_nb")  # the fixture unloads it again


@pytest.mark.looptime
async def test_load_reopens_a_stored_run_and_an_unknown_id_is_a_usage_error(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    w = VersionsWidget(llm=simulated_judge(), settings=WriterSettings(version_count=2))
    run = await w.generate("p")  # stored in the test's ARBORIS_STORE
    w.select(2)
    result = shell.run_cell(f"%arboris --load {run.run_id} -o ch")
    assert result.success, result.error_in_exec
    loaded = shell.user_ns["ch_widget"]
    assert loaded.selected_key == 2 and shell.user_ns["ch"].run_id == run.run_id
    assert [p.text for p in loaded.panels] == [v.content for v in run.versions]
    assert "VersionsWidget(versions=2, model='simulated')" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no run 'nope' in the run store"):
        shell.run_line_magic("arboris", "--load nope")
    with pytest.raises(UsageError, match="takes --load RUN_ID"):
        shell.run_line_magic("arboris", "-n 2")
