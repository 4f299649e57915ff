package auditing_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newMAC returns the audit MAC of a fresh keyring.
func newMAC(t testing.TB) tink.MAC {
	t.Helper()
	kr, err := keys.Generate()
	require.NoError(t, err)
	return kr.AuditMAC()
}

// newChainMAC returns the audit MAC fast path of a fresh keyring, the MAC
// phidb's pools seal with.
func newChainMAC(t testing.TB) tink.MAC {
	t.Helper()
	kr, err := keys.Generate()
	require.NoError(t, err)
	return kr.AuditChainMAC()
}

// actorCtx returns a context with an actor, purpose, request id and client
// address.
func actorCtx(actor string) context.Context {
	ctx := auditing.WithActor(context.Background(), auditing.Actor{ID: actor, Role: "nurse"})
	ctx = auditing.WithPurpose(ctx, "treatment")
	ctx = auditing.WithRequestID(ctx, "req-"+actor)
	return auditing.WithClientAddr(ctx, "10.0.0.7:51234")
}

// readEvents returns n read events of table "patients", primary keys
// prefix-0 .. prefix-(n-1).
func readEvents(ctx context.Context, prefix string, n int) []auditing.Event {
	pks := make([]string, n)
	for i := range pks {
		pks[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return auditing.NewEvents(ctx, auditing.ActionRead, "patients", []string{"name", "dob", "notes"}, pks...)
}

// recorder is a sink keeping copies of what it was given.
type recorder struct {
	mu     sync.Mutex
	events []auditing.Event
}

func (r *recorder) Write(_ context.Context, events []auditing.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, events...)
	return nil
}

func (r *recorder) all() []auditing.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]auditing.Event(nil), r.events...)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// jsonLines returns the non-empty lines of s.
func jsonLines(s string) []string {
	var out []string
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// newPool opens a pool on a fresh database with the audit table.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.NewDatabase(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, auditing.Init(context.Background(), pool))
	return pool
}

// requireProblem checks that r has exactly one problem, in stream, at seq,
// of kind.
func requireProblem(t *testing.T, r auditing.Report, stream string, seq uint64, kind string) {
	t.Helper()
	require.Len(t, r.Problems, 1, r.String())
	p := r.Problems[0]
	require.Equal(t, stream, p.Stream, r.String())
	require.Equal(t, kind, p.Kind, r.String())
	require.Equal(t, seq, p.Seq, r.String())
	require.Contains(t, r.String(), fmt.Sprintf("stream %s: first broken at seq %d: %s (", stream, seq, kind))
}
