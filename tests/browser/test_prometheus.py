"""A real Prometheus server scrapes a served Casebook with its bearer token and reads back the messages a clinician
sent in a real browser (Debian's `prometheus`, started here on 127.0.0.1 with a scrape config of its own)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import free_port

pytestmark = pytest.mark.browser

PROMETHEUS = Path('/usr/bin/prometheus')
TOKEN = 'prometheus-scrape-token-5c1d9e7a'
MESSAGES = 3
WAIT = 30.0  # seconds for Prometheus to start, and then to see every message


@pytest.fixture
def prometheus_binary() -> Path:
    if not PROMETHEUS.exists():
        pytest.skip(
            f'PROMETHEUS IS MISSING: {PROMETHEUS} not found, so the real-Prometheus scrape test did NOT run. '
            '`make prometheus` (part of `make test`) installs it (apt-get install prometheus).'
        )
    return PROMETHEUS


@pytest.fixture
def server_env() -> dict[str, str]:
    return {'CASEBOOK_METRICS_TOKEN': TOKEN}


@pytest.fixture
def prometheus(prometheus_binary: Path, server, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping `server` every second with the bearer token; its base URL."""
    port = free_port()
    config = {
        'global': {'scrape_interval': '1s', 'scrape_timeout': '1s', 'evaluation_interval': '1s'},
        'scrape_configs': [
            {
                'job_name': 'casebook',
                'authorization': {'type': 'Bearer', 'credentials': TOKEN},
                'static_configs': [{'targets': [f'127.0.0.1:{server.port}']}],
            }
        ],
    }
    config_path = tmp_path / 'prometheus.yml'
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = tmp_path / 'prometheus.log'
    with open(log_path, 'wb') as log:
        process = subprocess.Popen(
            [
                str(prometheus_binary),
                f'--config.file={config_path}',
                f'--storage.tsdb.path={tmp_path / "tsdb"}',
                f'--web.listen-address=127.0.0.1:{port}',
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f'http://127.0.0.1:{port}'
    try:
        _wait_until(
            lambda: _get(f'{url}/-/ready') is not None, lambda: f'Prometheus did not start:\n{log_path.read_text()}'
        )
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own http://127.0.0.1 URL)
            body = response.read()
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return {}


def _query(url: str, promql: str) -> float | None:
    answer = _get(f'{url}/api/v1/query?{urllib.parse.urlencode({"query": promql})}')
    result = (answer or {}).get('data', {}).get('result', [])
    return float(result[0]['value'][1]) if result else None


def _targets(url: str) -> list:
    """What Prometheus says about its scrapes (health, last error)."""
    targets = ((_get(f'{url}/api/v1/targets') or {}).get('data') or {}).get('activeTargets', [])
    return [(target.get('health'), target.get('lastError')) for target in targets]


def _wait_until(condition: Callable[[], bool], message: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.25)


def test_prometheus_reads_the_messages_sent_in_a_browser(
    prometheus_binary, server, add_clinician, new_visitor, prometheus: str
) -> None:
    add_clinician('ada', 'Dr. Ada')
    visitor = new_visitor()
    visitor.log_in('ada', 'Dr. Ada')
    visitor.open_patient('PAT123', 'Dr. Ada')
    for number in range(MESSAGES):
        visitor.send(f'Observation number {number}')

    written = 'casebook_messages_written_total'
    _wait_until(
        lambda: _query(prometheus, written) == MESSAGES,
        lambda: f'Prometheus read {written} = {_query(prometheus, written)}, not {MESSAGES}: {_targets(prometheus)}',
    )
    assert _query(prometheus, 'up{job="casebook"}') == 1  # scraped with the token, and nothing else in the way
    assert _query(prometheus, 'casebook_send_seconds_count') == MESSAGES
    visitor.assert_clean()
    server.assert_log_clean()
