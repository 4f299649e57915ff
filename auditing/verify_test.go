package auditing_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phidb/phidb/auditing"
)

// jsonLog is a JSON-lines audit log of streams "a", "b" and "c", 20 events
// each, appended in interleaved batches of 4, with checkpoints every 5.
type jsonLog struct {
	mac    tink.MAC
	lines  []string
	cps    []auditing.Checkpoint
	events []auditing.Event // as sealed
}

func newJSONLog(t *testing.T) *jsonLog {
	t.Helper()
	l := &jsonLog{mac: newMAC(t)}
	var buf bytes.Buffer
	sink := auditing.NewJSONSink(&buf)
	var chains []*auditing.Chain
	for _, s := range []string{"a", "b", "c"} {
		c := auditing.NewChain(s, l.mac)
		c.SetCheckpointFunc(5, func(cp auditing.Checkpoint) { l.cps = append(l.cps, cp) })
		chains = append(chains, c)
	}
	for round := range 5 {
		for _, c := range chains {
			ctx := actorCtx("user-" + c.Stream())
			ev := readEvents(ctx, fmt.Sprintf("%s%d", c.Stream(), round), 4)
			require.NoError(t, c.Append(ctx, ev, sink.Write))
			l.events = append(l.events, ev...)
		}
	}
	l.lines = jsonLines(buf.String())
	require.Len(t, l.lines, 60)
	require.Len(t, l.cps, 12)
	return l
}

func (l *jsonLog) verify(t *testing.T, lines []string, cps []auditing.Checkpoint) auditing.Report {
	t.Helper()
	events, err := auditing.ReadJSON(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	require.NoError(t, err)
	return auditing.Verify(events, l.mac, cps)
}

// find returns the index of the line of stream's seq.
func (l *jsonLog) find(t *testing.T, lines []string, stream string, seq uint64) int {
	t.Helper()
	for i, line := range lines {
		var m struct {
			Stream string
			Seq    uint64
		}
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		if m.Stream == stream && m.Seq == seq {
			return i
		}
	}
	t.Fatalf("no line for stream %s seq %d", stream, seq)
	return -1
}

// edit returns line with the members changed by fn.
func edit(t *testing.T, line string, fn func(m map[string]any)) string {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(line))
	d.UseNumber()
	var m map[string]any
	require.NoError(t, d.Decode(&m))
	fn(m)
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

// forge returns a JSON line for ev, sealed with mac after prev.
func forge(t *testing.T, mac tink.MAC, ev auditing.Event, prev []byte) string {
	t.Helper()
	ev.PrevHash = prev
	h, err := mac.ComputeMAC(ev.Canonical(append([]byte(nil), prev...)))
	require.NoError(t, err)
	ev.Hash = h
	var buf bytes.Buffer
	require.NoError(t, auditing.NewJSONSink(&buf).Write(context.Background(), []auditing.Event{ev}))
	return strings.TrimSpace(buf.String())
}

func TestVerifyJSONIntact(t *testing.T) {
	l := newJSONLog(t)
	events, err := auditing.ReadJSON(strings.NewReader(strings.Join(l.lines, "\n")))
	require.NoError(t, err, "no final newline is fine")
	require.Equal(t, l.events, events, "JSON round trip is exact")
	r := auditing.Verify(events, l.mac, l.cps)
	require.True(t, r.OK(), r.String())
	require.Equal(t, "intact: 60 events, 3 streams", r.String())

	// Any input order across streams is fine.
	shuffled := slices.Clone(events)
	slices.SortStableFunc(shuffled, func(a, b auditing.Event) int { return strings.Compare(b.Stream, a.Stream) })
	require.True(t, auditing.Verify(shuffled, l.mac, l.cps).OK())

	// The line carries hex hashes and no unexpected members.
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(l.lines[0]), &m))
	require.Equal(t, hex.EncodeToString(l.events[0].Hash), m["hash"])
	require.Equal(t, "", m["prev_hash"])
	require.ElementsMatch(t, []string{"v", "stream", "seq", "id", "time", "actor_id", "actor_role", "action", "table",
		"pk", "columns", "purpose", "client_addr", "request_id", "outcome", "prev_hash", "hash"}, keysOf(m))

	// A different audit key verifies nothing.
	r = auditing.Verify(events, newMAC(t), nil)
	require.Len(t, r.Problems, 3)
	for _, p := range r.Problems {
		require.Equal(t, uint64(1), p.Seq)
		require.Equal(t, auditing.KindAltered, p.Kind)
	}
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Each way of tampering with the JSON lines is detected at the right seq,
// with the right kind, and only in the stream tampered with.
func TestVerifyJSONTampering(t *testing.T) {
	l := newJSONLog(t)
	other := newMAC(t)
	seqEvent := func(stream string, seq uint64) auditing.Event {
		for _, e := range l.events {
			if e.Stream == stream && e.Seq == seq {
				return e
			}
		}
		t.Fatalf("no event %s/%d", stream, seq)
		return auditing.Event{}
	}

	cases := []struct {
		name   string
		tamper func(lines []string) []string
		seq    uint64
		kind   string
		detail string
	}{
		{"actor id of seq 7 changed", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			lines[i] = edit(t, lines[i], func(m map[string]any) { m["actor_id"] = "someone-else" })
			return lines
		}, 7, auditing.KindAltered, "field of the event was changed"},
		{"time of seq 7 changed by a microsecond", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			lines[i] = edit(t, lines[i], func(m map[string]any) {
				m["time"] = seqEvent("b", 7).Time.Add(1000).Format("2006-01-02T15:04:05.999999Z07:00")
			})
			return lines
		}, 7, auditing.KindAltered, ""},
		{"columns of seq 7 changed", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			lines[i] = edit(t, lines[i], func(m map[string]any) { m["columns"] = []string{"name"} })
			return lines
		}, 7, auditing.KindAltered, ""},
		{"hash of seq 7 replaced", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			lines[i] = edit(t, lines[i], func(m map[string]any) { m["hash"] = hex.EncodeToString(seqEvent("b", 8).Hash) })
			return lines
		}, 7, auditing.KindAltered, ""},
		{"seq 7 deleted", func(lines []string) []string {
			return slices.Delete(lines, l.find(t, lines, "b", 7), l.find(t, lines, "b", 7)+1)
		}, 7, auditing.KindMissing, "seq 7 is absent; seq 8 follows seq 6"},
		{"seqs 7 to 9 deleted", func(lines []string) []string {
			for seq := uint64(7); seq <= 9; seq++ {
				i := l.find(t, lines, "b", seq)
				lines = slices.Delete(lines, i, i+1)
			}
			return lines
		}, 7, auditing.KindMissing, "seqs 7 to 9 (3 events) are absent; seq 10 follows seq 6"},
		{"forged event under another key inserted before seq 7", func(lines []string) []string {
			f := seqEvent("b", 7)
			f.PK = "b-forged"
			return slices.Insert(lines, l.find(t, lines, "b", 7), forge(t, other, f, seqEvent("b", 6).Hash))
		}, 7, auditing.KindInserted, "invalid MAC claims seq 7"},
		{"forged event with a copied hash inserted before seq 7", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			f := edit(t, lines[i], func(m map[string]any) { m["pk"] = "b-forged"; m["id"] = "0190b1f4-7c1e-7000-8000-000000000001" })
			return slices.Insert(lines, i, f)
		}, 7, auditing.KindInserted, ""},
		{"forged event with a copied hash inserted after seq 7", func(lines []string) []string {
			i := l.find(t, lines, "b", 7)
			f := edit(t, lines[i], func(m map[string]any) { m["pk"] = "b-forged" })
			return slices.Insert(lines, i+1, f)
		}, 8, auditing.KindInserted, "invalid MAC claims seq 7 after seq 7"},
		{"forged event with a future seq inserted", func(lines []string) []string {
			f := seqEvent("b", 12)
			f.PK = "b-forged"
			return slices.Insert(lines, l.find(t, lines, "b", 7), forge(t, other, f, seqEvent("b", 11).Hash))
		}, 7, auditing.KindInserted, "claims seq 12 before seq 7"},
		{"seq 5 replayed after seq 9", func(lines []string) []string {
			return slices.Insert(lines, l.find(t, lines, "b", 9)+1, lines[l.find(t, lines, "b", 5)])
		}, 10, auditing.KindInserted, "a copy of seq 5 is stored after seq 9"},
		{"seqs 7 and 8 swapped", func(lines []string) []string {
			i, j := l.find(t, lines, "b", 7), l.find(t, lines, "b", 8)
			lines[i], lines[j] = lines[j], lines[i]
			return lines
		}, 7, auditing.KindReordered, "seq 8 is stored before seq 7"},
		{"seqs 8 and 9 swapped across batches", func(lines []string) []string {
			i, j := l.find(t, lines, "b", 8), l.find(t, lines, "b", 9)
			lines[i], lines[j] = lines[j], lines[i]
			return lines
		}, 8, auditing.KindReordered, ""},
		{"tail dropped after a checkpoint", func(lines []string) []string {
			// Checkpoints of b are at 8, 12, 16 and 20; b keeps 1..13.
			for seq := uint64(14); seq <= 20; seq++ {
				i := l.find(t, lines, "b", seq)
				lines = slices.Delete(lines, i, i+1)
			}
			return lines
		}, 14, auditing.KindTruncated, "a checkpoint records seq 16 but the stream ends at seq 13"},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lines := tc.tamper(slices.Clone(l.lines))
			r := l.verify(t, lines, l.cps)
			requireProblem(t, r, "b", tc.seq, tc.kind)
			require.Contains(t, r.Problems[0].Detail, tc.detail)
			require.NotContains(t, r.String(), "b-forged", "reports name seqs, not contents")
			require.NotContains(t, r.String(), "someone-else")
		})
	}
}

// Without checkpoints a cut tail cannot be seen; with them it is, also when
// the stream was regrown from the cut.
func TestVerifyTruncation(t *testing.T) {
	l := newJSONLog(t)
	var kept []string
	var keptEvents []auditing.Event
	for i, line := range l.lines {
		e := l.events[i]
		if e.Stream == "b" && e.Seq > 13 {
			continue
		}
		kept = append(kept, line)
		keptEvents = append(keptEvents, e)
	}
	require.True(t, l.verify(t, kept, nil).OK(), "a cut tail looks like a stream that ended")
	requireProblem(t, l.verify(t, kept, l.cps), "b", 14, auditing.KindTruncated)

	// Cut at 13 and regrown by resuming from the shortened head.
	head := keptEvents[slices.IndexFunc(keptEvents, func(e auditing.Event) bool { return e.Stream == "b" && e.Seq == 13 })]
	c := auditing.ResumeChain("b", l.mac, 13, head.Hash)
	var buf bytes.Buffer
	ctx := actorCtx("intruder")
	require.NoError(t, c.Append(ctx, readEvents(ctx, "new", 10), auditing.NewJSONSink(&buf).Write))
	regrown := append(slices.Clone(kept), jsonLines(buf.String())...)
	require.True(t, l.verify(t, regrown, nil).OK())
	r := l.verify(t, regrown, l.cps)
	requireProblem(t, r, "b", 16, auditing.KindTruncated)
	require.Contains(t, r.Problems[0].Detail, "the hash of seq 16 is not the checkpoint's")

	// A whole stream gone, and two streams broken at once.
	var noC []string
	for i, line := range l.lines {
		if l.events[i].Stream != "c" {
			noC = append(noC, line)
		}
	}
	r = l.verify(t, noC, l.cps)
	requireProblem(t, r, "c", 1, auditing.KindTruncated)
	require.Contains(t, r.Problems[0].Detail, "a checkpoint records seq 20 but the stream has no events")

	i := l.find(t, noC, "a", 3)
	noC[i] = edit(t, noC[i], func(m map[string]any) { m["pk"] = "x" })
	r = l.verify(t, noC, l.cps)
	require.Len(t, r.Problems, 2)
	require.Equal(t, auditing.Problem{Stream: "a", Seq: 3, Kind: auditing.KindAltered, Detail: r.Problems[0].Detail}, r.Problems[0])
	require.Equal(t, "c", r.Problems[1].Stream)
	require.Len(t, strings.Split(r.String(), "\n"), 2)
	require.False(t, r.OK())
	require.Equal(t, 40, r.Events)
	require.Equal(t, 2, r.Streams)
}

func TestReadJSONErrors(t *testing.T) {
	_, err := auditing.ReadJSON(strings.NewReader("\n{\"v\":2,\"stream\":\"s\",\"seq\":1,\"hash\":\"00\"}\n{\"pk\": \"secret-pk\"\n"))
	require.ErrorContains(t, err, "JSON line 3")
	require.NotContains(t, err.Error(), "secret-pk")
	_, err = auditing.ReadJSON(strings.NewReader(`{"v":2,"hash":"zz-secret"}`))
	require.ErrorContains(t, err, "line 1: hash is not hex")
	require.NotContains(t, err.Error(), "secret")
	_, err = auditing.ReadJSON(strings.NewReader(`{"stream":"s","seq":1,"pk":"secret-pk"}`))
	require.ErrorContains(t, err, "line 1: an event of an earlier phidb")
	require.NotContains(t, err.Error(), "secret")
	_, err = auditing.ReadJSON(strings.NewReader(`{"v":3,"stream":"s","seq":1}`))
	require.ErrorContains(t, err, "line 1: format version 3 is not supported (want 2)")
	events, err := auditing.ReadJSON(strings.NewReader(""))
	require.NoError(t, err)
	require.Empty(t, events)
}
