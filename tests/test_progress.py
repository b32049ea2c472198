"""The progress display: one line per stage off a terminal, a live line with estimates on one."""

from __future__ import annotations

import io

import pytest

from fedpers.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_read_as_clock_times():
    assert [duration(s) for s in (0, 7.4, 65, 725, 3723)] == [
        "0:00",
        "0:07",
        "1:05",
        "12:05",
        "1:02:03",
    ]


def test_off_a_terminal_each_stage_writes_one_line_with_the_estimate_of_the_run():
    clock, out, echoed = Clock(), io.StringIO(), []
    progress = Progress(out, clock=clock, echo=echoed.append, tick=None)
    assert not progress.live
    progress.plan([("training", 1), ("evaluation", 1), ("training", 1), ("evaluation", 2)])
    with progress.stage("round 1/2 · training (SecAgg+)", "training") as stage:
        stage.step("local training", 10, "clients")
        for _ in range(10):
            clock.now += 3
            stage.advance()
        stage.summary = "10 clients aggregated"
    with progress.stage("round 1/2 · evaluation", "evaluation"):
        clock.now += 5
    assert out.getvalue().splitlines() == [
        # no evaluation done yet: no estimate of the run
        "round 1/2 · training (SecAgg+): 10 clients aggregated · 0:30",
        # training 30 s, then the final evaluation weighs twice an evaluation: 30 + 2 * 5
        "round 1/2 · evaluation: 0:05 · run ~0:40 left",
    ]
    assert echoed == out.getvalue().splitlines()
    with progress.stage("round 2/2 · training (SecAgg+)", "training"):
        clock.now += 40
    with progress.stage("round 2/2 · evaluation (final)", "evaluation", weight=2):
        clock.now += 9
    assert out.getvalue().splitlines()[2:] == [
        "round 2/2 · training (SecAgg+): 0:40 · run ~0:10 left",
        "round 2/2 · evaluation (final): 0:09",
    ]


def test_a_stage_that_fails_says_so_and_the_error_goes_on():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, clock=clock, tick=None)
    with pytest.raises(RuntimeError), progress.stage("round 1/3 · training", "training"):
        clock.now += 12
        raise RuntimeError("no clients")
    assert out.getvalue() == "round 1/3 · training: stopped after 0:12\n"
    assert progress.estimate("training") is None  # a failed stage is no estimate


def test_the_first_stage_estimates_from_the_replies_then_from_the_stages_done():
    clock = Clock()
    progress = Progress(io.StringIO(), live=False, clock=clock, tick=None)
    progress.plan([("training", 1), ("training", 1)])
    with progress.stage("round 1/2 · training", "training") as stage:
        assert stage.left() is None and progress.run_left() is None
        stage.step("local training", 10, "clients")
        clock.now += 8
        stage.advance(4)  # 2 s a client: 12 s for the 6 left
        assert stage.left() == pytest.approx(12.0)
        assert "local training 4/10 clients · 0:08 elapsed · ~0:12 left" in progress.status()
        # the second round has no estimate until one is done
        assert progress.run_left() is None
        clock.now += 12
    with progress.stage("round 2/2 · training", "training") as stage:
        clock.now += 5
        assert stage.left() == pytest.approx(15.0) and progress.run_left() == pytest.approx(15.0)


def test_on_a_terminal_the_stage_is_one_live_line_and_log_lines_go_above_it():
    clock, out = Clock(), Terminal()
    progress = Progress(out, clock=clock, tick=None)
    assert progress.live
    with progress.stage("round 1/1 · training (SecAgg+)", "training") as stage:
        stage.step("local training", 4, "clients")
        clock.now += 6
        stage.advance(2)
        live = out.getvalue().split("\r")[-1]
        assert live.startswith("round 1/1 · training (SecAgg+): ")
        assert "2/4 clients · 0:06 elapsed · ~0:06 left" in live
        progress.write("WARNING: a client dropped")
    text = out.getvalue()
    assert "WARNING: a client dropped\n" in text
    # the live line is cleared; the stage's line stays
    assert text.endswith("round 1/1 · training (SecAgg+): 0:06\n")


def test_a_step_that_is_the_whole_stage_estimates_from_its_rate_once_it_has_one():
    clock = Clock()
    progress = Progress(io.StringIO(), live=False, clock=clock, tick=None)
    with progress.stage("round 1/2 · evaluation", "evaluation"):
        clock.now += 10
    with progress.stage("round 2/2 · evaluation (final)", "evaluation", weight=2) as stage:
        stage.step("scoring held-out conversations", 10, "users", whole=True)
        assert stage.left() == pytest.approx(20.0)  # twice the last evaluation
        clock.now += 9
        stage.advance(9)
        assert stage.left() == pytest.approx(1.0)  # a second a user, one left


def test_the_estimate_follows_the_latest_stage_of_a_kind():
    """The first round also starts the devices: later rounds are estimated from the latest one."""
    clock = Clock()
    progress = Progress(io.StringIO(), live=False, clock=clock, tick=None)
    for seconds in (100, 30):
        with progress.stage("training", "training"):
            clock.now += seconds
    assert progress.estimate("training") == 30
