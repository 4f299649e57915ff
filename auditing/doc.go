// Package auditing records who read or wrote which PHI row, never the
// values, as tamper-evident audit events.
//
// Each [Event] names an actor, an action, a table, a row's primary key and
// the columns involved. A [Chain] (one per stream, typically one stream per
// phidb pool) seals events into an HMAC hash chain under the keyring's audit
// key,
//
//	hash_n = MAC(audit key, hash_{n-1} || Canonical(event_n)),  hash_0 = empty
//
// (a [Batch] seals the events of a large read ahead, while its rows
// arrive) and hands them, under its lock and in sequence order, to a [Sink]:
// [PostgresSink] (the audit table, append-only through triggers, one row per
// batch), [JSONSink] (JSON lines), [SlogSink] (log records), [FanOut] to
// several, and [Async] for best-effort background delivery. [Verify] reads
// the chains back ([ReadPostgres], [ReadJSON]) and reports the first place
// each stream was altered, lost events, gained forged or copied ones, was
// reordered, or (given [Checkpoint]s kept elsewhere) was cut short;
// [VerifyPostgres] does the same on the audit table one batch at a time.
//
// A typical setup:
//
//	chain := auditing.NewChain(stream, keyring.AuditChainMAC())
//	if cp, ok, err := auditing.LastPostgres(ctx, pool, stream); err != nil {
//		return err
//	} else if ok {
//		chain = auditing.ResumeChain(stream, keyring.AuditChainMAC(), cp.Seq, cp.Hash)
//	}
//	sink := auditing.NewPostgresSink(pool)
//	...
//	events := auditing.NewEvents(ctx, auditing.ActionRead, "patients", []string{"name", "dob"}, pks...)
//	err := chain.Append(ctx, events, sink.Write)
//
// No PHI enters an event, and errors of this package name streams, tables
// and sequence numbers only.
package auditing
