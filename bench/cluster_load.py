"""Load on a cluster: `deploy/cluster` (N instances behind nginx, PostgreSQL, Redis) driven by bench/load.py's clients.

For each instance count it makes a fresh PostgreSQL database and Redis key prefix, prepares the accounts with
live sessions (their browser storage written into Redis, as a login leaves it), starts `deploy/cluster`, and:

- load: `--clients` simulated tabs through nginx, one send every 5 s each (bench/load.py's client and rhythm);
  send → ack is click → the message reaching the sender's own tab. Clients per instance are counted from the
  established connections on each instance's port.
- cross-instance delivery: `--pairs` clinicians each with a second browser; the first tab talks to instance 1
  directly, the second to the last instance directly (with one instance, both to it); the time from the
  click on Send in the first until the message reaches the second.
- live-update fan-out: the live events published through Redis during the run (counted by a subscriber of
  the bench's own to every live channel) and, per instance, those it received from Redis (its
  `casebook_live_received_total`, from /metrics before and after; absent before that counter existed):
  deliveries per published event.

    .venv/bin/python bench/cluster_load.py --instances 1 2 --clients 500 --duration 60
    .venv/bin/python bench/cluster_load.py --instances 2 --clients 20 --duration 10     # smoke
    .venv/bin/python bench/cluster_load.py --instances 1 --clients 300 --sign-in form --reloads 2   # storage churn

`--sign-in form`: the load tabs sign in through the login form (bench/load.py's `form`) instead of starting with
a live session; `--reloads N`: once connected, each load tab reloads its page N times (a new page and tab each
time) before the sends start. Both leave storage behind (the login page's, the reloaded pages'): the Redis
figures are read after them — connections per instance (from `ss`, by process) and by connection name
(CLIENT LIST), and this run's pub/sub channels.

Everything is on 127.0.0.1 and stops by itself (bounded ramp-up, `--duration`, bounded drain, then the cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import (
    RESULTS,
    ROOT,
    free_port,
    load_average,
    log,
    machine,
    postgres_admin,
    proc_cpu_seconds,
    proc_status,
    summary,
    write_result,
)
from bench.load import (
    ACK_TIMEOUT,
    CONNECT_TIMEOUT,
    RAMP_CONCURRENCY,
    SEND_INTERVAL,
    Account,
    Client,
    Stats,
    _client_life,
    _prepare,
    _ramped,
    tab_session,
)
from support import REDIS_URL

CLUSTER = ROOT / 'deploy' / 'cluster'
READY_TIMEOUT = 180.0


def _free_port_run(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    import socket

    for _ in range(100):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(('127.0.0.1', port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f'no {count} consecutive free ports found')


class Cluster:
    """`deploy/cluster` as a child process; ready once it prints `ready:`."""

    def __init__(
        self, instances: int, state_dir: Path, database_url: str, prefix: str, secret: str, casebook: str | None = None
    ) -> None:
        self.instances = instances
        self.state_dir = state_dir
        self.port = free_port()
        first = _free_port_run(instances)  # deploy/cluster takes this port and the ones after it
        self.instance_ports = [first + n for n in range(instances)]
        self.command = [
            sys.executable,
            str(CLUSTER),
            '--instances',
            str(instances),
            '--port',
            str(self.port),
            '--first-instance-port',
            str(self.instance_ports[0]),
            '--database-url',
            database_url,
            '--redis-url',
            REDIS_URL,
            '--state-dir',
            str(state_dir),
        ] + (['--casebook', casebook] if casebook else [])
        self.metrics_token = secrets.token_urlsafe(24)
        self.env = {
            'CASEBOOK_REDIS_KEY_PREFIX': prefix,
            'CASEBOOK_STORAGE_SECRET': secret,
            'CASEBOOK_METRICS_TOKEN': self.metrics_token,
        }
        self.process: subprocess.Popen[str] | None = None
        self.url = f'http://127.0.0.1:{self.port}'

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.state_dir / 'cluster.out', 'w')  # the child keeps it; closed when it exits
        self.process = subprocess.Popen(
            self.command, env={**os.environ, **self.env}, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            lines = (self.state_dir / 'cluster.out').read_text().splitlines()
            for line in lines:
                if line.startswith('ready:'):
                    self.instance_urls = re.findall(r'http://127\.0\.0\.1:\d+', '\n'.join(lines))[: self.instances]
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError('deploy/cluster did not become ready:\n' + (self.state_dir / 'cluster.out').read_text())

    def pids(self) -> list[int]:
        return [int((self.state_dir / f'instance-{n}.pid').read_text()) for n in range(1, self.instances + 1)]

    def nginx_pids(self) -> list[int]:
        """nginx's master (its command line names this run's config) and its workers (its children)."""
        found = subprocess.run(['pgrep', '-f', str(self.state_dir / 'nginx.conf')], capture_output=True, text=True)
        masters = [int(pid) for pid in found.stdout.split()]
        workers = []
        for master in masters:
            children = subprocess.run(['pgrep', '-P', str(master)], capture_output=True, text=True).stdout
            workers += [int(pid) for pid in children.split()]
        return masters + workers

    def connections(self) -> list[int]:
        """Established connections on each instance's port (nginx's websockets to it)."""
        counts = []
        for port in self.instance_ports:
            listing = subprocess.run(
                ['ss', '-tnH', 'state', 'established', f'( sport = :{port} )'], capture_output=True, text=True
            ).stdout
            counts.append(len(listing.splitlines()))
        return counts

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def _live_received(http, cluster: Cluster) -> list[dict[str, float] | None]:
    """Per instance, its `casebook_live_received_total` by result (None when it has no such counter)."""
    counts: list[dict[str, float] | None] = []
    for url in cluster.instance_urls:
        async with http.get(f'{url}/metrics', headers={'Authorization': f'Bearer {cluster.metrics_token}'}) as answer:
            exposition = await answer.text()
        found = re.findall(r'^casebook_live_received_total\{result="(\w+)"\} (\S+)$', exposition, re.MULTILINE)
        counts.append({result: float(value) for result, value in found} or None)
    return counts


class LiveEventCounter:
    """Counts the live events published through Redis under a prefix, with a pattern subscription of its own
    (whatever the channel rule of the version under test)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.pattern, self.count = client, f'{prefix}live:*', 0
        self.counting = False

    async def start(self) -> None:
        self.pubsub = self.client.pubsub()
        await self.pubsub.psubscribe(self.pattern)
        self.task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        async for message in self.pubsub.listen():
            if message['type'] == 'pmessage' and self.counting:
                self.count += 1

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pubsub.aclose()


def _fan_out(before: list, after: list, published: int) -> dict:
    """Live events received per instance during the run, and deliveries per published event."""
    if any(counts is None for counts in before + after):
        return {'published': published, 'received_per_instance': None}
    received = [
        {result: int(counts[result] - then.get(result, 0.0)) for result in counts}
        for then, counts in zip(before, after, strict=True)
    ]
    total = sum(sum(counts.values()) for counts in received)
    return {
        'published': published,
        'received_per_instance': received,
        'received_total': total,
        'deliveries_per_event': round(total / published, 2) if published else None,
        'delivered_per_event': round(sum(c.get('delivered', 0) for c in received) / published, 2)
        if published
        else None,
    }


async def _paired_send(sender: Client, watcher: Client, sequence: int, stats: Stats, delivery: list[float]) -> None:
    text_ = f'pair {sender.account.index} {sequence} {secrets.token_hex(6)}'
    own, other = sender.expect(text_), watcher.expect(text_)
    await sender.set_value('Type message here', text_)
    started = time.perf_counter()
    await sender.click('Send')
    stats.sent += 1
    acked = await sender.wait(text_, own, ACK_TIMEOUT)
    stats.latencies_ms.append((acked - started) * 1000)
    arrived = await watcher.wait(text_, other, ACK_TIMEOUT)
    delivery.append((arrived - started) * 1000)


async def _pair_life(sender: Client, watcher: Client, go: asyncio.Event, stop_at: list[float], stats, delivery):
    try:
        await asyncio.wait_for(sender.start(False), CONNECT_TIMEOUT * 2)
        await asyncio.wait_for(watcher.start(False), CONNECT_TIMEOUT * 2)
    except Exception as error:
        stats.error('connect', f'pair {sender.account.username}: {type(error).__name__} {error}')
        return
    await go.wait()
    await asyncio.sleep(random.uniform(0, SEND_INTERVAL))
    sequence, next_at = 0, time.monotonic()
    while time.monotonic() < stop_at[0]:
        try:
            await _paired_send(sender, watcher, sequence, stats, delivery)
        except Exception as error:
            stats.error('pair', f'{sender.account.username}: {type(error).__name__} {error}')
        sequence += 1
        next_at += SEND_INTERVAL
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _reloaded(clients: list[Client], times: int, stats: Stats) -> None:
    """Each connected client reloads its page `times` times, as a browser tab does (a new page, a new tab id)."""
    ramp = asyncio.Semaphore(RAMP_CONCURRENCY)

    async def reload(client: Client) -> None:
        for _ in range(times):
            async with ramp:
                try:
                    await client.follow('/')
                    await client.connect()
                    await client.open_patient()
                except Exception as error:
                    stats.error('reload', f'{client.account.username}: {type(error).__name__} {error}')
                    return

    await asyncio.gather(*(reload(c) for c in clients if c.ws is not None and not c.ws.closed))


async def run_once(
    instances: int,
    clients: int,
    pairs: int,
    duration: float,
    interval: float = SEND_INTERVAL,
    casebook: str | None = None,
    *,
    form: bool = False,
    reloads: int = 0,
) -> dict:
    tag = secrets.token_hex(4)
    database = f'casebook_bench_{tag}'
    prefix = f'bench-{tag}:'
    database_url = f'postgresql+asyncpg://postgres@127.0.0.1:5432/{database}'
    secret = secrets.token_urlsafe(32)
    state_dir = RESULTS / 'work' / f'cluster-{instances}-{tag}'
    redis_client = redis.from_url(REDIS_URL)
    await postgres_admin(f'CREATE DATABASE "{database}"')
    cluster = Cluster(instances, state_dir, database_url, prefix, secret, casebook)
    result: dict = {
        'instances': instances,
        'clients': clients,
        'pairs': pairs,
        'duration_s': duration,
        'send_interval_s': interval,
        'casebook': casebook or 'this checkout',
        'sign_in': 'form' if form else 'preset',
        'reloads': reloads,
    }
    try:

        async def write_storage(storage_id: str, storage: dict) -> None:
            await redis_client.set(f'{prefix}nicegui:user-{storage_id}', json.dumps(storage))

        log(f'cluster {instances}: preparing {clients} + {pairs} accounts')
        accounts = await _prepare(
            state_dir / 'prep', clients + pairs, secret, True, database_url=database_url, write_storage=write_storage
        )
        # each paired clinician has a second browser: another live session and storage of its own
        second_cookies = await _second_browsers(accounts[clients:], database_url, secret, write_storage)
        log(f'cluster {instances}: starting deploy/cluster')
        await asyncio.to_thread(cluster.start)
        live_events = LiveEventCounter(redis_client, prefix)
        await live_events.start()
        stats = Stats()
        delivery: list[float] = []
        async with tab_session(CONNECT_TIMEOUT) as http:
            load_clients = [
                Client(http, cluster.url, Account(a.index, a.username, None if form else a.cookie), stats)
                for a in accounts[:clients]
            ]
            senders = [Client(http, cluster.instance_urls[0], account, stats) for account in accounts[clients:]]
            watchers = [
                Client(http, cluster.instance_urls[-1], Account(a.index, a.username, cookie), stats)
                for a, cookie in zip(accounts[clients:], second_cookies, strict=True)
            ]
            ramp, ready, go = asyncio.Semaphore(RAMP_CONCURRENCY), asyncio.Event(), asyncio.Event()
            stop_at = [float('inf')]
            ramp_started = time.perf_counter()
            lives = [
                asyncio.create_task(_client_life(c, form, ramp, ready, go, stop_at, stats, interval))
                for c in load_clients
            ]
            lives += [
                asyncio.create_task(_pair_life(s, w, go, stop_at, stats, delivery))
                for s, w in zip(senders, watchers, strict=True)
            ]
            await _ramped(load_clients, stats, ramp_started)
            if reloads:
                await _reloaded(load_clients, reloads, stats)
            await asyncio.sleep(2)
            result['connected'] = sum(c.ws is not None and not c.ws.closed for c in load_clients)
            result['ramp_s'] = round(time.perf_counter() - ramp_started, 1)
            per_instance = cluster.connections()
            per_instance[0] -= pairs  # the pairs' tabs connect to the first and the last instance directly
            per_instance[-1] -= pairs
            result['load_tabs_per_instance'] = per_instance
            log(f'cluster {instances}: {result["connected"]}/{clients} connected, per instance {per_instance}')
            stats.latencies_ms.clear()
            stats.timeline.clear()
            pids, nginx = cluster.pids(), cluster.nginx_pids()
            cpu_before = [proc_cpu_seconds(pid) for pid in pids]
            received_before = await _live_received(http, cluster)
            live_events.counting = True
            nginx_before = sum(proc_cpu_seconds(pid) for pid in nginx)
            others_before, machine_before = _other_cpu_seconds(), _machine_cpu_seconds()
            load_before = load_average()
            started = time.perf_counter()
            stop_at[0] = time.monotonic() + duration
            go.set()
            await asyncio.sleep(duration)
            await asyncio.wait(lives, timeout=ACK_TIMEOUT + max(interval, SEND_INTERVAL) + 5)
            elapsed = time.perf_counter() - started
            live_events.counting = False
            await asyncio.sleep(0.5)  # what was published before this reaches the instances
            result['live_fan_out'] = _fan_out(received_before, await _live_received(http, cluster), live_events.count)
            await live_events.stop()
            result['instance_cpu_percent_of_one_core'] = [
                round((proc_cpu_seconds(pid) - before) / elapsed * 100, 1)
                for pid, before in zip(pids, cpu_before, strict=True)
            ]
            result['nginx_cpu_percent_of_one_core'] = round(
                (sum(proc_cpu_seconds(pid) for pid in nginx) - nginx_before) / elapsed * 100, 1
            )
            result['other_cpu_percent_of_one_core'] = {
                name: round((seconds - others_before.get(name, 0.0)) / elapsed * 100, 1)
                for name, seconds in _other_cpu_seconds().items()
            }
            busy, stolen, total = (
                after - before for after, before in zip(_machine_cpu_seconds(), machine_before, strict=True)
            )
            result['machine_busy_percent'] = round(busy / total * 100, 1)
            result['machine_stolen_percent'] = round(stolen / total * 100, 1)
            result['load_average'] = {'before': load_before, 'after': load_average()}
            result['instance_rss_mib'] = [proc_status(pid).get('VmRSS') for pid in pids]
            result['redis'] = await _redis_figures(redis_client, prefix, pids)
            for task in lives:
                task.cancel()
            await asyncio.gather(*(c.close() for c in load_clients + senders + watchers), return_exceptions=True)
        result['sends'] = stats.sent
        result['acks'] = len(stats.latencies_ms)
        result['send_to_ack_ms'] = summary(stats.latencies_ms)
        result['cross_instance_delivery_ms'] = summary(delivery)
        result['errors'] = stats.errors
        result['error_examples'] = stats.error_examples
        result['postgres'] = await _table_sizes(database_url)
    finally:
        await asyncio.to_thread(cluster.stop)
        keys = [key async for key in redis_client.scan_iter(match=f'{prefix}*')]
        if keys:
            await redis_client.delete(*keys)
        await redis_client.aclose()
        await postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    ack, cross = result.get('send_to_ack_ms', {}), result.get('cross_instance_delivery_ms', {})
    log(
        f'cluster {instances} x {clients}: p50 {ack.get("median")} p99 {ack.get("p99")} ms; cross-instance p50 '
        f'{cross.get("median")} p99 {cross.get("p99")} ms; errors {sum(result.get("errors", {}).values())}'
    )
    return result


def _other_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of what shares the machine with the instances: this load generator, Redis and the
    PostgreSQL server processes alive now (a backend that exits takes its seconds with it, so this undercounts
    PostgreSQL a little; the pools keep their connections, so not by much)."""
    seconds = {'load_generator': proc_cpu_seconds(os.getpid())}
    for name, pattern in (('redis', 'redis-server'), ('postgres', 'postgres')):
        found = subprocess.run(['pgrep', '-x', pattern], capture_output=True, text=True).stdout.split()
        total = 0.0
        for pid in found:
            try:
                total += proc_cpu_seconds(int(pid))
            except (FileNotFoundError, ProcessLookupError):
                pass
        seconds[name] = total
    return seconds


def _machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, stolen, total) jiffies of all cores together, from /proc/stat; stolen: time the hypervisor gave
    this virtual machine's cores to others (counted in busy too)."""
    fields = [int(x) for x in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return float(sum(fields) - idle), float(fields[7]), float(sum(fields))


async def _redis_figures(client: redis.Redis, prefix: str, pids: list[int]) -> dict:
    """Connections and channels on the Redis server while the cluster holds its tabs: all of them (other users of
    the server included), each instance's (by process, from `ss`), by connection name, and this run's channels."""
    clients, stats = await client.info('clients'), await client.info('stats')
    names: dict[str, int] = {}
    for connection in await client.client_list():
        name = connection.get('name') or '(unnamed)'
        names[name] = names.get(name, 0) + 1
    return {
        'connected_clients': clients.get('connected_clients'),
        'instance_connections': [_redis_connections_of(pid) for pid in pids],
        'connections_by_name': names,
        'run_pubsub_channels': len(await client.pubsub_channels(f'{prefix}*')),
        'pubsub_channels': len(await client.pubsub_channels()),
        'pubsub_patterns': await client.pubsub_numpat(),
        'total_commands_processed': stats.get('total_commands_processed'),
    }


def _redis_connections_of(pid: int) -> int:
    """Established TCP connections from process `pid` to Redis (REDIS_URL's port)."""
    port = int(REDIS_URL.rsplit(':', 1)[1].split('/')[0])
    listing = subprocess.run(
        ['ss', '-tnpH', 'state', 'established', f'( dport = :{port} )'], capture_output=True, text=True
    ).stdout
    return sum(1 for line in listing.splitlines() if f'pid={pid},' in line)


async def _table_sizes(database_url: str) -> dict:
    """Rows and bytes (with indexes and TOAST) of the tables a message writes to, and bytes per message."""
    engine = create_async_engine(database_url)
    figures: dict = {}
    try:
        async with engine.connect() as connection:
            for table in ('messages', 'audit_events', 'conversations', 'auth_sessions'):
                rows = (await connection.execute(text(f'SELECT count(*) FROM {table}'))).scalar_one()  # noqa: S608
                size = (await connection.execute(text(f"SELECT pg_total_relation_size('{table}')"))).scalar_one()
                figures[table] = {'rows': rows, 'bytes': size}
            avg = (await connection.execute(text('SELECT avg(octet_length(text)) FROM messages'))).scalar_one()
            figures['average_text_bytes'] = round(float(avg or 0), 1)
    finally:
        await engine.dispose()
    messages = figures['messages']['rows'] or 1
    figures['bytes_per_message_incl_audit'] = round(
        (figures['messages']['bytes'] + figures['audit_events']['bytes']) / messages
    )
    return figures


async def _second_browsers(accounts: list[Account], database_url: str, secret: str, write_storage) -> list[str]:
    """A second live session and browser storage for each of these clinicians; their signed cookies."""
    from base64 import b64encode
    from uuid import uuid4

    import itsdangerous
    from sqlalchemy import select

    from casebook.db import Database
    from casebook.models import Clinician
    from casebook.services import sessions
    from casebook.web import notebook

    database = Database(database_url)
    signer = itsdangerous.TimestampSigner(secret)
    cookies = []
    try:
        async with database.session() as session:
            for account in accounts:
                clinician = (await session.execute(select(Clinician).filter_by(username=account.username))).scalar_one()
                token = await sessions.start(
                    session, clinician_id=clinician.id, user_agent='bench', address='127.0.0.1'
                )
                storage_id = str(uuid4())
                await write_storage(storage_id, {notebook.SESSION: token, notebook.CLINICIAN: clinician.id})
                cookies.append(signer.sign(b64encode(json.dumps({'id': storage_id}).encode())).decode())
    finally:
        await database.dispose()
    return cookies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--instances', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--clients', type=int, default=500, help='tabs through nginx (default 500)')
    parser.add_argument('--pairs', type=int, default=20, help='clinicians with a tab on two instances (default 20)')
    parser.add_argument('--duration', type=float, default=60)
    parser.add_argument(
        '--send-interval',
        type=float,
        default=SEND_INTERVAL,
        help=f"seconds between one load tab's messages (default {SEND_INTERVAL:g}; the pairs always use that)",
    )
    parser.add_argument('--sign-in', choices=['preset', 'form'], default='preset', help='how the load tabs sign in')
    parser.add_argument('--reloads', type=int, default=0, help='page reloads per load tab before the sends')
    parser.add_argument('--name', default='cluster-load')
    parser.add_argument(
        '--casebook', help="the instances' casebook program, e.g. another checkout's .venv/bin/casebook (to compare)"
    )
    args = parser.parse_args()
    results = {'machine': machine(), 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'runs': []}
    for instances in args.instances:
        results['runs'].append(
            asyncio.run(
                run_once(
                    instances,
                    args.clients,
                    args.pairs,
                    args.duration,
                    args.send_interval,
                    args.casebook,
                    form=args.sign_in == 'form',
                    reloads=args.reloads,
                )
            )
        )
    results['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    path = write_result(args.name, results)
    log(f'written {path}')


if __name__ == '__main__':
    main()
