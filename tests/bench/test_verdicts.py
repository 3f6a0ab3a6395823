"""bench/run_all.py's verdicts and exit code, and bench/browser_timing.py's count of interrupted sends, on
made-up figures: a missed budget, a conversation that is not flat, or a send cut short by a reload fails."""

from __future__ import annotations

from bench import browser_timing, run_all


def _row(messages: int, median: float, **extra: object) -> dict:
    return {
        'app': 'casebook',
        'messages': messages,
        'send_ms': {'median': median},
        'memory_mib': {'VmRSS': 100.0, 'VmHWM': 110.0},
        'per_message': {'write_bytes': 50_000},
        **extra,
    }


def _report(timing: dict, *, quick: bool = False) -> dict:
    return {
        'quick': quick,
        'verdicts': run_all.verdicts(timing, None),
        'problems': run_all.problems(timing, None),
    }


def _verdict(report: dict, starts: str) -> dict:
    return next(row for row in report['verdicts'] if row['what'].startswith(starts))


def test_a_full_run_within_every_budget_exits_0() -> None:
    timing = {'casebook': [_row(0, 12.0), _row(10_000, 13.0), _row(1_000_000, 14.5)], 'baseline': []}
    report = _report(timing)
    assert all(row['pass'] for row in report['verdicts'])
    assert _verdict(report, 'Send → visible flat')['by'] == '+1.50 ms'
    assert run_all.exit_code(report) == 0


def test_a_missed_budget_fails_a_full_run_but_not_a_quick_one() -> None:
    timing = {'casebook': [_row(0, 12.0), _row(10_000, 15.5), _row(1_000_000, 15.9)], 'baseline': []}
    report = _report(timing)
    assert not _verdict(report, 'Send → visible, median')['pass']
    assert run_all.exit_code(report) == 1
    assert run_all.exit_code(_report(timing, quick=True)) == 0


def test_a_send_time_that_grows_with_the_conversation_is_not_flat() -> None:
    timing = {'casebook': [_row(0, 8.0), _row(10_000, 9.0), _row(1_000_000, 11.5)], 'baseline': []}
    report = _report(timing)
    assert _verdict(report, 'Send → visible, median')['pass']  # under 15 ms everywhere
    assert not _verdict(report, 'Send → visible flat')['pass']
    assert run_all.exit_code(report) == 1


def test_sends_interrupted_by_a_reload_are_counted_and_fail_even_a_quick_run() -> None:
    timed = [
        {'shown': 10.0},
        {'shown': None, 'page_reloaded': True},
        {'shown': None, 'page_reloaded': True, 'lost': True},
    ]
    counted = browser_timing._interrupted(timed)
    assert counted == {'sends_timed': 3, 'sends_with_page_reload': 2, 'sends_lost': 1}
    timing = {'casebook': [_row(0, 12.0, **counted)], 'baseline': []}
    report = _report(timing, quick=True)
    assert report['problems'] == [
        'casebook at 0: 2 of 3 timed sends interrupted by a page reload, left out of the median (1 never shown)'
    ]
    assert run_all.exit_code(report) == 1
    assert '(without 2 of 3: page reloaded)' in browser_timing.table(timing)


def test_the_lesson_baseline_losing_sends_is_a_finding_not_a_failed_run() -> None:
    """The lesson's design reloads its own page under a long history (what Casebook was built to avoid): the full
    run reports it and still passes; the same in a Casebook row fails."""
    counted = {'sends_timed': 30, 'sends_with_page_reload': 4, 'sends_lost': 4}
    baseline = {**_row(20_000, 4_000.0, **counted), 'app': 'lesson baseline'}
    timing = {'casebook': [_row(0, 12.0), _row(10_000, 13.0), _row(1_000_000, 14.5)], 'baseline': [baseline]}
    report = _report(timing)
    assert report['problems'] == []
    assert run_all.findings(timing) == [
        'lesson baseline: lesson baseline at 20,000: 4 of 30 timed sends interrupted by a page reload, left out of '
        'the median (4 never shown)'
    ]
    assert run_all.exit_code(report) == 0
    timing['casebook'][1] = _row(10_000, 13.0, **counted)
    assert run_all.exit_code(_report(timing)) == 1
