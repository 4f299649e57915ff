package auditing

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/tink-crypto/tink-go/v2/tink"
)

// VerifyPostgres checks the audit table as [Verify] checks the events that
// [ReadPostgres] returns, with the same report, but reads the table one
// batch at a time: it holds one or two batches in memory, whatever the size
// of the table, and computes each hash once. mac is as for ReadPostgres (the
// keyring's AuditChainMAC). An error means the table could not be read or
// holds a malformed row; problems of the chains are in the report.
//
// Rows come in stream and sequence order, so an expected event never comes
// later than a higher one: what Verify would call reordered shows here, as
// there, as altered events, and a gap is missing events. An event claiming
// a seq already verified is reported as inserted.
func VerifyPostgres(ctx context.Context, db DB, mac tink.MAC, checkpoints []Checkpoint) (Report, error) {
	if mac == nil {
		return Report{}, fmt.Errorf("auditing: verifying the audit table: no MAC")
	}
	rows, err := db.Query(ctx, `SELECT `+selectColumns+` FROM `+DefaultTable+` ORDER BY stream, `+storedOrder)
	if err != nil {
		return Report{}, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	defer rows.Close()

	cps := map[string][]Checkpoint{}
	for _, cp := range checkpoints {
		if cp.Seq > 0 {
			cps[cp.Stream] = append(cps[cp.Stream], cp)
		}
	}
	v := &pgVerifier{h: newBatchHasher(mac), cps: cps, seen: map[string]bool{}}
	var row storedRow
	for rows.Next() {
		if err := row.scan(rows); err != nil {
			return Report{}, err
		}
		if err := v.add(&row); err != nil {
			return Report{}, err
		}
		row = storedRow{}
	}
	if err := rows.Err(); err != nil {
		return Report{}, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	if err := v.flush(0, false); err != nil {
		return Report{}, err
	}
	v.endStream()
	for name, list := range cps {
		if !v.seen[name] {
			top := slices.MaxFunc(list, func(a, b Checkpoint) int { return compareSeq(a.Seq, b.Seq) })
			v.r.Problems = append(v.r.Problems, Problem{Stream: name, Seq: 1, Kind: KindTruncated,
				Detail: fmt.Sprintf("a checkpoint records seq %d but the stream has no events", top.Seq)})
		}
	}
	slices.SortFunc(v.r.Problems, func(a, b Problem) int { return strings.Compare(a.Stream, b.Stream) })
	return v.r, nil
}

func compareSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pgVerifier walks the rows of the audit table in order, one stream at a
// time. It keeps one row back (pending), so that the last event of a row
// knows whether the next row starts with the same seq.
type pgVerifier struct {
	h    *batchHasher
	cps  map[string][]Checkpoint
	seen map[string]bool
	r    Report

	pending    []Event // the events of the row read last, hashes set
	pendingOK  []bool
	walk       streamWalk
	broken     bool
	cpHashes   map[uint64][]byte // hashes at the stream's checkpoint seqs, as verified
	spare      []Event
	spareOK    []bool
	streamName string
	started    bool // streamName names the stream being walked
}

// add takes the next row: the pending one is checked now that what follows
// it is known.
func (v *pgVerifier) add(row *storedRow) error {
	name := row.shared.Stream
	if !v.started || name != v.streamName {
		if err := v.flush(0, false); err != nil {
			return err
		}
		v.endStream()
		v.startStream(name)
	} else if err := v.flush(uint64(row.first), true); err != nil {
		return err
	}
	events, err := row.expand(v.spare[:0])
	if err != nil {
		return err
	}
	v.r.Events += len(events)
	ok := slices.Grow(v.spareOK[:0], len(events))[:len(events)]
	sb := storedBatch{n: len(events), prev: row.prev, checks: row.p.checks, last: row.p.last}
	if !v.broken {
		if err := v.h.rehash(events, &sb, ok); err != nil {
			return err
		}
	}
	v.spare, v.spareOK = v.pending, v.pendingOK // kept whole: flush looks up copies in it
	v.pending, v.pendingOK = events, ok
	return nil
}

func (v *pgVerifier) startStream(name string) {
	v.streamName, v.started = name, true
	v.seen[name] = true
	v.r.Streams++
	v.walk = streamWalk{name: name, expected: 1}
	v.broken = false
	v.cpHashes = map[uint64][]byte{}
	for _, cp := range v.cps[name] {
		v.cpHashes[cp.Seq] = nil
	}
}

// flush checks the pending events; nextFirst is the first seq of the row
// that follows them in the same stream, if hasNext.
func (v *pgVerifier) flush(nextFirst uint64, hasNext bool) error {
	events, ok := v.pending, v.pendingOK
	// A break at a seq already verified is at the first event of a row, and
	// that seq is in the row verified just before (rows come in first_seq
	// order and chain without overlap): v.spare, not yet reused.
	prevRow := v.spare
	copyOf := func(seq uint64) []byte {
		if len(prevRow) > 0 && seq >= prevRow[0].Seq && seq-prevRow[0].Seq < uint64(len(prevRow)) {
			return prevRow[seq-prevRow[0].Seq].Hash
		}
		return nil
	}
	if v.broken || len(events) == 0 {
		return nil
	}
	for k := range events {
		e := &events[k]
		sameSeqNext := k+1 < len(events) && events[k+1].Seq == e.Seq ||
			k+1 == len(events) && hasNext && nextFirst == e.Seq
		// In table order no row that comes later holds a lower seq than
		// this one's first: the expected seq never comes later.
		p, broken := v.walk.step(e, ok[k], sameSeqNext, func() bool { return false }, copyOf)
		if broken {
			v.r.Problems = append(v.r.Problems, p)
			v.broken = true
			return nil
		}
		if _, want := v.cpHashes[e.Seq]; want {
			v.cpHashes[e.Seq] = slices.Clone(e.Hash)
		}
	}
	return nil
}

// endStream compares the stream just walked, if intact, with its
// checkpoints.
func (v *pgVerifier) endStream() {
	if !v.started || v.broken {
		return
	}
	last := v.walk.expected - 1
	if p, broken := compareCheckpoints(v.streamName, last, func(seq uint64) []byte { return v.cpHashes[seq] }, v.cps[v.streamName]); broken {
		v.r.Problems = append(v.r.Problems, p)
	}
}
