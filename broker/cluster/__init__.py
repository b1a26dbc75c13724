"""A shard replicated on NATS JetStream: a leader broker and standbys (``--cluster``).

One concern per module (see ``docs/CLUSTER.md``):

- ``config``: ``ClusterConfig`` and the names a shard uses in JetStream;
- ``batches``: the pure bookkeeping of the stream journal (records waiting,
  the batch in flight, marks acknowledged) and the lease's local clock;
- ``shard``: the NATS connection and the shard's stream, lease bucket and
  snapshot store;
- ``lease``: leadership, a key with a TTL renewed by compare-and-set;
- ``snapshots``: snapshots in the object store, loading the newest;
- ``stream_journal``: the :class:`~broker.journal.JournalBackend` that
  publishes each loop turn's records as one message, fenced by sequence;
- ``standby``: tailing the stream through ``replay``, answering ``NOT_LEADER``;
- ``node``: ``python -m broker --cluster``: standby, takeover, leader.

Nothing here is imported unless ``--cluster`` is used: ``nats`` is an
optional dependency (``jobwire[cluster]``), and this package's ``__init__``
imports none of it.
"""
