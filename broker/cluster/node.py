"""``python -m broker --cluster``: one node of a shard, standby until it leads.

1. Connect to NATS, make sure the shard's stream, lease bucket and snapshot
   store exist; listen, answering ``NOT_LEADER``; load the newest snapshot.
2. Standby: follow the stream into the replayed state; look at the lease
   every ``poll_interval``; once it is gone (expired, or released by a
   leader that stopped), claim it.
3. Takeover: renew the lease from now on; catch up with the stream's last
   sequence and append the takeover message (empty, ``Jobwire-Leader``
   header) expecting that sequence: from then on a publish of the old
   leader is refused. If something got in first, catch up again.
4. Lead: stop answering ``NOT_LEADER`` and start a :class:`Broker` on the
   same port, with a :class:`StreamJournal` that hands it the replayed jobs;
   its recovery requeues the jobs that were running, their attempt counted,
   as after a restart.

Returns the exit code: 0 after a stop, :data:`EXIT_FENCED` when the node
had to stop leading (fenced out or cut off from NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from nats.errors import Error as NatsError
from nats.js.api import Header
from nats.js.errors import APIError

from broker.cluster.config import ClusterConfig
from broker.cluster.lease import Leadership
from broker.cluster.shard import Shard, connect, retrying
from broker.cluster.standby import Follower, NotLeaderListener
from broker.cluster.stream_journal import StreamJournal, fenced_sequence
from broker.config import BrokerConfig
from broker.server import Broker

log = logging.getLogger("broker.cluster")

EXIT_FENCED = 3
LEADER_HEADER = "Jobwire-Leader"
# A takeover step that failed (NATS busy electing, say) is tried again after this long.
RETRY_PAUSE = 0.1


class LeaseLost(Exception):
    """The lease was lost during the takeover: stand by again."""


async def serve_cluster(config: BrokerConfig, cluster: ClusterConfig, stop: asyncio.Event) -> int:
    Broker(config).check_exposure()
    try:
        shard = await connect(cluster, name=f"jobwire broker {cluster.shard}")
    except (TimeoutError, NatsError, OSError) as exc:
        log.error("cannot use NATS at %s: %s", ",".join(cluster.servers), exc)
        return 1
    try:
        return await _serve(config, shard, stop)
    finally:
        with contextlib.suppress(TimeoutError, NatsError):
            async with asyncio.timeout(2.0):
                await shard.close()


async def _serve(config: BrokerConfig, shard: Shard, stop: asyncio.Event) -> int:
    cluster = shard.config
    listener = NotLeaderListener(cluster.shard, config.ssl)
    port = await listener.start(config.host, config.port)
    address = cluster.advertise or f"{config.host}:{port}"
    follower = Follower(shard)
    try:
        await retrying("loading the newest snapshot", follower.load_snapshot)
        log.info(
            "shard %s: standby, listening on %s:%d (NOT_LEADER until it leads; stream %s, "
            "%d replicas)",
            cluster.shard,
            config.host,
            port,
            cluster.stream,
            shard.replicas,
        )
        while True:
            leadership = Leadership(shard.lease, cluster.lease_key, address, cluster.lease_ttl)
            if not await _stand_by(follower, leadership, listener, stop):
                return 0
            leadership.start_renewing()
            try:
                last_sequence = await _take_over(shard, follower, leadership)
            except LeaseLost as exc:
                log.warning("shard %s: lost the lease while taking over (%s)", cluster.shard, exc)
                await leadership.stop(release=False)
                continue
            break
    finally:
        await listener.close()
        await follower.close()
    journal = StreamJournal(
        shard,
        leadership,
        jobs=follower.jobs,
        settings=follower.settings,
        last_sequence=last_sequence,
        snapshot_bytes=follower.snapshot_bytes,
    )
    log.info(
        "shard %s: leading at %s from stream sequence %d (%d jobs)",
        cluster.shard,
        address,
        last_sequence,
        len(follower.jobs),
    )
    broker = Broker(dataclasses.replace(config, port=port), storage=journal)
    try:
        await broker.serve_until(stop)
    finally:
        await journal.close()
    if broker.fatal_failure is not None:
        log.critical(
            "shard %s: stopped leading (%s); exiting with %d",
            cluster.shard,
            broker.fatal_failure.describe(),
            EXIT_FENCED,
        )
        return EXIT_FENCED
    return 0


async def _stand_by(
    follower: Follower, leadership: Leadership, listener: NotLeaderListener, stop: asyncio.Event
) -> bool:
    """Follow the stream until the lease is ours (True) or ``stop`` is set (False)."""
    loop = asyncio.get_running_loop()
    # The tail is stopped, not cancelled: see Follower.follow.
    stop_tail = asyncio.Event()
    tail = loop.create_task(follower.follow(stop=stop_tail))
    interval = follower.shard.config.poll_interval
    try:
        while not stop.is_set():
            try:
                leader = await leadership.leader_address()
                if leader is None and await leadership.claim():
                    return True
            except (TimeoutError, NatsError) as exc:
                log.debug("looking at the lease: %s", exc or type(exc).__name__)
            else:
                if leader != listener.leader:
                    listener.leader = leader
                    log.info("the leader of shard %s is %s", listener.shard, leader or "nobody")
            if tail.done():
                tail.result()  # the follower's error, if it failed
                tail = loop.create_task(follower.follow(stop=stop_tail))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
        return False
    finally:
        stop_tail.set()
        await asyncio.gather(tail, return_exceptions=True)
        await follower.close()


async def _take_over(shard: Shard, follower: Follower, leadership: Leadership) -> int:
    """Catch up and append the takeover message: the stream sequence it got."""
    cluster = shard.config
    while True:
        if not leadership.valid():
            raise LeaseLost(leadership.lost or "lost")
        try:
            info = await shard.js.stream_info(cluster.stream)
            last = info.state.last_seq
            if not await follower.follow(last, deadline=leadership.clock.valid_until):
                continue  # the lease ran out first (the loop's check says so)
            ack = await shard.js.publish(
                cluster.subject,
                b"",
                timeout=cluster.publish_timeout,
                headers={
                    Header.EXPECTED_LAST_SEQUENCE.value: str(last),
                    LEADER_HEADER: leadership.address,
                },
            )
        except APIError as exc:
            if not fenced_sequence(exc):
                log.warning("taking over %s: %s", cluster.stream, exc)
                await asyncio.sleep(RETRY_PAUSE)
            continue  # a last message of the old leader got in: catch up again
        except (TimeoutError, NatsError) as exc:
            log.warning("taking over %s: %s", cluster.stream, exc or type(exc).__name__)
            await asyncio.sleep(RETRY_PAUSE)
            continue
        return int(ack.seq)
