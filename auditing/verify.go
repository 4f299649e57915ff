package auditing

import (
	"bytes"
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/tink-crypto/tink-go/v2/tink"
)

// Problem kinds reported by [Verify].
const (
	// KindAltered: the event at Seq does not verify (a field, PrevHash or
	// Hash was changed), or verifies but is not chained to the event before
	// it (the stream was forked).
	KindAltered = "altered"
	// KindMissing: the events from Seq on are absent; a later one follows.
	// (An event removed from inside a batch stored in PostgreSQL shows as
	// altered instead: see [ReadPostgres].)
	KindMissing = "missing"
	// KindInserted: an event that does not belong was found where Seq was
	// expected: a forgery with an invalid MAC, a duplicate of an earlier
	// event, or an event claiming a sequence number already verified.
	KindInserted = "inserted"
	// KindReordered: an authentic event came where Seq was expected, and
	// the event with Seq comes later.
	KindReordered = "reordered"
	// KindTruncated: a checkpoint shows that the stream reached further than
	// it does now, or had another hash at the checkpoint's sequence number.
	KindTruncated = "truncated"
)

// Problem is the first place where a stream's chain breaks. Seq is the
// first sequence number that cannot be trusted: events 1 to Seq-1 of the
// stream verified. Detail explains, naming sequence numbers only. (For
// events read from PostgreSQL, whose hashes inside a batch are computed
// again, the event that was changed is told apart by a 4-byte check: with
// probability 2^-32 the break is reported at a later event of its batch.)
type Problem struct {
	Stream string
	Seq    uint64
	Kind   string // KindAltered, KindMissing, KindInserted, KindReordered or KindTruncated
	Detail string
}

// Report is the result of [Verify]: how many events and streams were
// checked, and at most one problem (the first) per stream, ordered by
// stream.
type Report struct {
	Events   int
	Streams  int
	Problems []Problem
}

// OK reports whether no problem was found.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// String returns "intact: N events, S streams", or one line per problem:
// "stream X: first broken at seq N: kind (detail)".
func (r Report) String() string {
	if r.OK() {
		return fmt.Sprintf("intact: %d events, %d streams", r.Events, r.Streams)
	}
	var b strings.Builder
	for i, p := range r.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "stream %s: first broken at seq %d: %s (%s)", p.Stream, p.Seq, p.Kind, p.Detail)
	}
	return b.String()
}

// Verify checks the hash chains of events, which may hold several streams
// in any order; within a stream, the input order is taken as the stored
// order. Each stream must run from seq 1 up without gaps, each event's
// PrevHash must equal the Hash of the event before it, and each Hash must
// verify under mac (the keyring's AuditMAC; any enabled audit key) over
// PrevHash || Canonical.
//
// The first break of each stream is classified:
//
//   - altered: the expected seq is there but its MAC fails (or it does not
//     chain to the previous event);
//   - missing: a higher seq comes and the expected one never does;
//   - reordered: a higher, authentic seq comes and the expected one comes
//     later;
//   - inserted: an event with a failing MAC is followed by another claiming
//     the same seq, or claims a seq that is still to come, or claims a seq
//     already verified (a forgery, or a copy of an earlier event);
//   - truncated: (with checkpoints) the stream ends before a checkpoint's seq,
//     or its hash at a checkpoint's seq is not the checkpoint's. A checkpoint
//     of a stream absent from events is reported too.
//
// Without checkpoints, removing the last events of a stream cannot be told
// from a stream that ended there; see [Chain.SetCheckpointFunc].
//
// Verify checks MACs on all CPUs; it handles over a million events per
// second on two cores.
func Verify(events []Event, mac tink.MAC, checkpoints []Checkpoint) Report {
	macOK := verifyMACs(events, mac)

	// Group by stream, keeping input order within each.
	var (
		names  []string
		groups [][]int
		index  = map[string]int{}
		last   = -1
	)
	for i := range events {
		s := events[i].Stream
		if last < 0 || names[last] != s {
			g, ok := index[s]
			if !ok {
				g = len(names)
				index[s] = g
				names = append(names, s)
				groups = append(groups, nil)
			}
			last = g
		}
		groups[last] = append(groups[last], i)
	}

	cps := map[string][]Checkpoint{}
	for _, cp := range checkpoints {
		if cp.Seq > 0 {
			cps[cp.Stream] = append(cps[cp.Stream], cp)
		}
	}

	r := Report{Events: len(events), Streams: len(names)}
	for g, name := range names {
		idx := groups[g]
		p, broken := verifyStream(name, idx, events, macOK)
		if !broken {
			p, broken = checkCheckpoints(name, idx, events, cps[name])
		}
		if broken {
			r.Problems = append(r.Problems, p)
		}
	}
	for name, list := range cps {
		if _, ok := index[name]; !ok {
			top := slices.MaxFunc(list, func(a, b Checkpoint) int { return cmp.Compare(a.Seq, b.Seq) })
			r.Problems = append(r.Problems, Problem{Stream: name, Seq: 1, Kind: KindTruncated,
				Detail: fmt.Sprintf("a checkpoint records seq %d but the stream has no events", top.Seq)})
		}
	}
	slices.SortFunc(r.Problems, func(a, b Problem) int { return strings.Compare(a.Stream, b.Stream) })
	return r
}

// verifyMACs reports for each event whether its Hash verifies, using one
// goroutine per CPU and one canonical buffer per goroutine.
func verifyMACs(events []Event, mac tink.MAC) []bool {
	ok := make([]bool, len(events))
	workers := runtime.GOMAXPROCS(0)
	if len(events) < 4096 {
		workers = 1
	}
	chunk := (len(events) + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < len(events); lo += chunk {
		hi := min(lo+chunk, len(events))
		wg.Go(func() {
			buf := make([]byte, 0, 1024)
			var enc canonicalEncoder // the events of a batch share their digest
			for i := lo; i < hi; i++ {
				e := &events[i]
				buf = enc.append(append(buf[:0], e.PrevHash...), e)
				ok[i] = mac.VerifyMAC(e.Hash, buf) == nil
			}
		})
	}
	wg.Wait()
	return ok
}

// verifyStream walks one stream in stored order and returns its first
// problem, if any.
func verifyStream(name string, idx []int, events []Event, macOK []bool) (Problem, bool) {
	w := streamWalk{name: name, expected: 1}
	for k, i := range idx {
		e := &events[i]
		sameSeqNext := k+1 < len(idx) && events[idx[k+1]].Seq == e.Seq
		later := func() bool {
			for _, j := range idx[k+1:] {
				if events[j].Seq == w.expected {
					return true
				}
			}
			return false
		}
		copyOf := func(seq uint64) []byte { return events[idx[seq-1]].Hash }
		if p, broken := w.step(e, macOK[i], sameSeqNext, later, copyOf); broken {
			return p, true
		}
	}
	return Problem{}, false
}

// streamWalk is the state of a walk along one stream in stored order: the
// sequence number expected next and the hash it must chain from.
type streamWalk struct {
	name     string
	expected uint64
	prevHash []byte
}

// step checks the next stored event e of the stream, whose MAC verified if
// ok. sameSeqNext tells whether the event stored after e claims e's seq,
// later whether the expected seq comes later in the stream, and copyOf
// returns the hash of an already verified seq (or nil). It returns the
// stream's first problem, or advances.
func (w *streamWalk) step(e *Event, ok, sameSeqNext bool, later func() bool, copyOf func(seq uint64) []byte) (Problem, bool) {
	expected := w.expected
	problem := func(kind, format string, args ...any) (Problem, bool) {
		return Problem{Stream: w.name, Seq: expected, Kind: kind, Detail: fmt.Sprintf(format, args...)}, true
	}
	switch {
	case e.Seq == expected:
		linked := bytes.Equal(e.PrevHash, w.prevHash)
		switch {
		case ok && linked:
			w.expected++
			w.prevHash = e.Hash
			return Problem{}, false
		case !ok && sameSeqNext:
			return problem(KindInserted, "an event with an invalid MAC claims seq %d and another event with seq %d follows it", e.Seq, e.Seq)
		case !ok && linked:
			return problem(KindAltered, "the MAC does not verify: a field of the event was changed, or its hash replaced")
		case !ok:
			return problem(KindAltered, "the MAC does not verify and prev_hash is not the hash of the previous event")
		default:
			return problem(KindAltered, "the MAC verifies but prev_hash is not the hash of the previous event: the stream was forked (two writers, or a resume from a stale head)")
		}
	case e.Seq > expected:
		isLater := later()
		switch {
		case isLater && ok:
			return problem(KindReordered, "seq %d is stored before seq %d", e.Seq, expected)
		case isLater:
			return problem(KindInserted, "an event with an invalid MAC claims seq %d before seq %d", e.Seq, expected)
		case e.Seq == expected+1:
			return problem(KindMissing, "seq %d is absent; seq %d follows seq %d", expected, e.Seq, expected-1)
		default:
			return problem(KindMissing, "seqs %d to %d (%d events) are absent; seq %d follows seq %d", expected, e.Seq-1, e.Seq-expected, e.Seq, expected-1)
		}
	default: // e.Seq < expected
		switch {
		case !ok:
			return problem(KindInserted, "an event with an invalid MAC claims seq %d after seq %d", e.Seq, expected-1)
		case e.Seq >= 1 && bytes.Equal(copyOf(e.Seq), e.Hash):
			return problem(KindInserted, "a copy of seq %d is stored after seq %d", e.Seq, expected-1)
		default:
			return problem(KindInserted, "an authentic event claims seq %d, already verified, after seq %d: the stream was forked", e.Seq, expected-1)
		}
	}
}

// checkCheckpoints compares an intact stream with its checkpoints.
func checkCheckpoints(name string, idx []int, events []Event, cps []Checkpoint) (Problem, bool) {
	// The stream is intact: seqs 1..len(idx), in order.
	return compareCheckpoints(name, uint64(len(idx)), func(seq uint64) []byte { return events[idx[seq-1]].Hash }, cps)
}

// compareCheckpoints compares an intact stream of last seqs, whose hash at
// a seq hashAt returns, with its checkpoints.
func compareCheckpoints(name string, last uint64, hashAt func(seq uint64) []byte, cps []Checkpoint) (Problem, bool) {
	slices.SortFunc(cps, func(a, b Checkpoint) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, cp := range cps {
		if cp.Seq > last {
			return Problem{Stream: name, Seq: last + 1, Kind: KindTruncated,
				Detail: fmt.Sprintf("a checkpoint records seq %d but the stream ends at seq %d", cp.Seq, last)}, true
		}
		if !bytes.Equal(hashAt(cp.Seq), cp.Hash) {
			return Problem{Stream: name, Seq: cp.Seq, Kind: KindTruncated,
				Detail: fmt.Sprintf("the hash of seq %d is not the checkpoint's: the stream was cut and rewritten", cp.Seq)}, true
		}
	}
	return Problem{}, false
}
