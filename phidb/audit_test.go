package phidb_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

// auditedPool opens a pool that records events in phidb_audit and, when w is
// set, as JSON lines too. Contexts need an actor: there is no system actor.
func auditedPool(t testing.TB, cs string, kr *keys.Keyring, cfg phidb.Config, ddl ...string) *phidb.Pool {
	t.Helper()
	ctx := context.Background()
	cfg.Keys = kr
	cfg.AuditPostgres = true
	db, err := phidb.New(ctx, cs, cfg)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	require.NoError(t, auditing.Init(ctx, db))
	for _, q := range ddl {
		_, err := db.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	return db
}

func clinician(ctx context.Context) context.Context {
	ctx = auditing.WithActor(ctx, auditing.Actor{ID: "u-1842", Role: "clinician"})
	ctx = auditing.WithPurpose(ctx, "treatment")
	return auditing.WithRequestID(ctx, "req-7")
}

func storedEvents(t testing.TB, db *phidb.Pool) []auditing.Event {
	t.Helper()
	events, err := auditing.ReadPostgres(context.Background(), db, db.Keys().AuditChainMAC())
	require.NoError(t, err)
	return events
}

func TestNoActorNoPHI(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{}, everythingDDL)
	ctx := context.Background()
	rows := sampleRows()
	require.ErrorIs(t, phidb.Insert(ctx, db, &rows[0]), phidb.ErrNoActor)
	_, err := phidb.Select[everything](ctx, db, "SELECT * FROM everything")
	require.ErrorIs(t, err, phidb.ErrNoActor)
	_, err = phidb.InsertMany(ctx, db, rows)
	require.ErrorIs(t, err, phidb.ErrNoActor)
	require.ErrorIs(t, phidb.Delete[everything](ctx, db, uuid.New()), phidb.ErrNoActor)

	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Zero(t, n)
	events := storedEvents(t, db)
	require.Len(t, events, 4, "each refusal is recorded")
	for _, e := range events {
		require.Equal(t, auditing.OutcomeDenied, e.Outcome)
	}

	// With an actor in the context, the same calls work and say who.
	ctx = clinician(ctx)
	require.NoError(t, phidb.Insert(ctx, db, &rows[0]))
	got, err := phidb.Get[everything](ctx, db, "SELECT * FROM everything WHERE id = $1", rows[0].ID)
	require.NoError(t, err)
	require.Equal(t, rows[0].Str, got.Str)
	events = storedEvents(t, db)
	require.Len(t, events, 6)
	create, read := events[4], events[5]
	require.Equal(t, auditing.ActionCreate, create.Action)
	require.Equal(t, auditing.ActionRead, read.Action)
	for _, e := range events[4:] {
		require.Equal(t, auditing.Actor{ID: "u-1842", Role: "clinician"}, e.Actor)
		require.Equal(t, "treatment", e.Purpose)
		require.Equal(t, "req-7", e.RequestID)
		require.Equal(t, "everything", e.Table)
		require.Equal(t, rows[0].ID.String(), e.PK)
		require.Equal(t, auditing.OutcomeOK, e.Outcome)
	}
	require.Contains(t, read.Columns, "str")
	require.True(t, auditing.Verify(events, kr.AuditMAC(), nil).OK())

	// A pool with a system actor serves background jobs.
	sys, err := phidb.New(context.Background(), pgtest.NewDatabase(t), phidb.Config{Keys: kr, SystemActor: &auditing.Actor{ID: "nightly-export", Role: "system"}})
	require.NoError(t, err)
	defer sys.Close()
	_, err = phidb.Select[everything](context.Background(), sys, "SELECT * FROM everything WHERE false")
	require.Error(t, err) // the table does not exist there: but not ErrNoActor
	require.NotErrorIs(t, err, phidb.ErrNoActor)
}

// Many goroutines reading and writing: exactly one event per row touched,
// and the chain verifies.
func TestAuditEventPerRowUnderConcurrency(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{}, contactDDL)
	ctx := clinician(context.Background())
	seed, _ := contacts(500, 50)
	_, err := phidb.InsertMany(ctx, db, seed)
	require.NoError(t, err)
	touched := atomic.Int64{}
	touched.Add(int64(len(seed)))

	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for time.Now().Before(deadline) {
				var n int
				var err error
				switch r.IntN(6) {
				case 0:
					c := contact{Email: fmt.Sprintf("new%d@x.example", r.IntN(1000)), MRN: "1", Name: "N", DOB: time.Now().UTC()}
					err, n = phidb.Insert(ctx, db, &c), 1
				case 1:
					// Now and then a read large enough for its events to be
					// sealed while it streams (and sealed again when other
					// events came first).
					limit := 1 + r.IntN(20)
					if r.IntN(4) == 0 {
						limit = 256 + r.IntN(300)
					}
					var got []contact
					got, err = phidb.Select[contact](ctx, db, "SELECT * FROM contacts ORDER BY random() LIMIT $1", limit)
					n = len(got)
				case 2:
					var got []contact
					got, err = phidb.Lookup[contact](ctx, db, "Email", fmt.Sprintf("patient%04d@clinic.example", r.IntN(50)))
					n = len(got)
				case 3:
					var c contact
					c, err = phidb.Get[contact](ctx, db, "SELECT * FROM contacts WHERE id = $1", seed[r.IntN(len(seed))].ID)
					if err == nil {
						c.Ward = "moved"
						err = phidb.Update(ctx, db, &c)
						n = 2 // one read, one update
					}
				case 4:
					batch, _ := contacts(3, 50)
					var w int64
					w, err = phidb.InsertMany(ctx, db, batch)
					n = int(w)
				case 5:
					tx, terr := db.Begin(ctx)
					if terr != nil {
						err = terr
						break
					}
					c := contact{Email: "tx@x.example", MRN: "2", Name: "T", DOB: time.Now().UTC()}
					if err = phidb.Insert(ctx, tx, &c); err == nil {
						if r.IntN(2) == 0 {
							err = tx.Rollback(ctx)
						} else if err = tx.Commit(ctx); err == nil {
							n = 1
						}
					}
				}
				if err != nil {
					errs <- err
					return
				}
				touched.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	events := storedEvents(t, db)
	require.EqualValues(t, touched.Load(), len(events), "one event per row touched, exactly")
	report := auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()})
	require.True(t, report.OK(), report.String())
	t.Logf("%s", report)
}

// Each kind of tampering with the stored chain is found at the right event.
func TestAuditTamperingDetected(t *testing.T) {
	kr := testKeys(t)
	var out bytes.Buffer
	var checkpoints []auditing.Checkpoint
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{
		AuditSink:       auditing.NewJSONSink(&out),
		CheckpointEvery: 5,
		OnCheckpoint:    func(c auditing.Checkpoint) { checkpoints = append(checkpoints, c) },
	}, everythingDDL)
	ctx := clinician(context.Background())
	for i := 0; i < 4; i++ {
		rows := sampleRows()
		_, err := phidb.InsertMany(ctx, db, rows) // seq 1-2, 5-6, ...
		require.NoError(t, err)
		_, err = phidb.Select[everything](ctx, db, "SELECT * FROM everything LIMIT 2")
		require.NoError(t, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 16)
	verify := func(ls []string) auditing.Report {
		events, err := auditing.ReadJSON(strings.NewReader(strings.Join(ls, "\n") + "\n"))
		require.NoError(t, err)
		return auditing.Verify(events, kr.AuditMAC(), checkpoints)
	}
	require.True(t, verify(lines).OK())

	edit := func(line string, f func(m map[string]any)) string {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		f(m)
		b, err := json.Marshal(m)
		require.NoError(t, err)
		return string(b)
	}
	cases := []struct {
		name string
		mut  func([]string) []string
		seq  uint64
		kind string
	}{
		{"field changed", func(l []string) []string {
			l[6] = edit(l[6], func(m map[string]any) {
				for k := range m {
					if strings.Contains(strings.ToLower(k), "purpose") {
						m[k] = "marketing"
					}
				}
			})
			return l
		}, 7, auditing.KindAltered},
		{"event deleted", func(l []string) []string { return append(l[:4:4], l[5:]...) }, 5, auditing.KindMissing},
		{"event inserted", func(l []string) []string { return append(l[:9:9], append([]string{l[3]}, l[9:]...)...) }, 10, ""},
		{"events swapped", func(l []string) []string { l[10], l[11] = l[11], l[10]; return l }, 11, auditing.KindReordered},
		{"tail dropped", func(l []string) []string { return l[:12] }, 13, auditing.KindTruncated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := verify(tc.mut(append([]string(nil), lines...)))
			require.False(t, r.OK())
			require.Len(t, r.Problems, 1, r.String())
			require.Equal(t, tc.seq, r.Problems[0].Seq, r.String())
			if tc.kind != "" {
				require.Equal(t, tc.kind, r.Problems[0].Kind, r.String())
			}
		})
	}
}

// No plaintext in any stored event, in the table or in JSON.
func TestAuditHoldsNoPlaintext(t *testing.T) {
	kr := testKeys(t)
	var out bytes.Buffer
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{AuditSink: auditing.NewJSONSink(&out)}, everythingDDL)
	ctx := clinician(context.Background())
	rows := sampleRows()
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)
	_, err = phidb.Select[everything](ctx, db, "SELECT * FROM everything")
	require.NoError(t, err)
	require.NoError(t, phidb.Update(ctx, db, &rows[0]))
	_, err = db.Exec(ctx, "UPDATE everything SET str = set_byte(str, 20, get_byte(str, 20) # 1)")
	require.NoError(t, err)
	_, err = phidb.Select[everything](ctx, db, "SELECT * FROM everything")
	require.Error(t, err) // a failed read is recorded too

	var table string
	require.NoError(t, db.QueryRow(ctx, "SELECT string_agg(a::text, '|') FROM phidb_audit a").Scan(&table))
	// Primary keys that are UUIDs are stored as their 16 bytes (see
	// auditing.SchemaSQL).
	require.Contains(t, table, hex.EncodeToString(rows[0].ID[:]))
	for _, s := range sampleSecrets {
		require.NotContains(t, table, s)
		require.NotContains(t, out.String(), s)
	}
	events := storedEvents(t, db)
	require.Equal(t, auditing.OutcomeError, events[len(events)-1].Outcome)
}

// If events cannot be recorded, the read fails and returns no rows.
func TestAuditSinkFailureFailsRead(t *testing.T) {
	kr := testKeys(t)
	ctx := clinician(context.Background())
	cs := pgtest.NewDatabase(t)
	// Roles are cluster-wide: a name of its own for each run.
	role := "app_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	admin := auditedPool(t, cs, kr, phidb.Config{}, everythingDDL,
		`CREATE ROLE `+role+` LOGIN PASSWORD 'app-pw'`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON everything TO `+role,
		`GRANT SELECT, INSERT ON phidb_audit TO `+role)
	rows := sampleRows()
	_, err := phidb.InsertMany(ctx, admin, rows)
	require.NoError(t, err)

	appCS := strings.Replace(cs, "user=postgres", "user="+role, 1)
	appCS = appCS[:strings.Index(appCS, "password=")] + "password=app-pw " + appCS[strings.Index(appCS, "dbname="):]
	app, err := phidb.New(ctx, appCS, phidb.Config{Keys: kr, AuditPostgres: true})
	require.NoError(t, err)
	defer app.Close()
	got, err := phidb.Select[everything](ctx, app, "SELECT * FROM everything")
	require.NoError(t, err)
	require.Len(t, got, 2)

	_, err = admin.Exec(ctx, "REVOKE INSERT ON phidb_audit FROM "+role)
	require.NoError(t, err)
	got, err = phidb.Select[everything](ctx, app, "SELECT * FROM everything")
	require.Error(t, err)
	require.Nil(t, got)
	require.ErrorContains(t, err, "permission denied")
	noLeak(t, err, sampleSecrets...)
	_, err = phidb.Get[everything](ctx, app, "SELECT * FROM everything WHERE id = $1", rows[0].ID)
	require.Error(t, err)
	// A write whose events cannot be stored does not happen either.
	extra := sampleRows()[0]
	require.Error(t, phidb.Insert(ctx, app, &extra))
	var n int
	require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Equal(t, 2, n)

	// The same with a sink of another kind that fails.
	failing, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditSink: failSink{}})
	require.NoError(t, err)
	defer failing.Close()
	got, err = phidb.Select[everything](ctx, failing, "SELECT * FROM everything")
	require.Error(t, err)
	require.Nil(t, got)
}

type failSink struct{}

func (failSink) Write(context.Context, []auditing.Event) error { return errors.New("sink down") }

// A write rolled back leaves neither the row nor its event; a committed one
// leaves both.
func TestAuditWritesShareTheTransaction(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{}, everythingDDL)
	ctx := clinician(context.Background())
	rows := sampleRows()

	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, phidb.Insert(ctx, tx, &rows[0]))
	require.NoError(t, tx.Rollback(ctx))
	require.Empty(t, storedEvents(t, db))

	tx, err = db.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, phidb.Insert(ctx, tx, &rows[0]))
	sp, err := tx.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, phidb.Insert(ctx, sp.(*phidb.Tx), &rows[1]))
	require.NoError(t, sp.Rollback(ctx)) // the savepoint's write and event go
	require.Empty(t, storedEvents(t, db), "nothing is recorded before commit")
	require.NoError(t, tx.Commit(ctx))

	events := storedEvents(t, db)
	require.Len(t, events, 1)
	require.Equal(t, rows[0].ID.String(), events[0].PK)
	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Equal(t, 1, n)
	require.True(t, auditing.Verify(events, kr.AuditMAC(), nil).OK())
}

type auditedNote struct {
	ID   uuid.UUID `db:"id" phi:"pk"`
	Text string    `db:"text" phi:"encrypt"`
}

func (auditedNote) TableName() string { return "audited_notes" }

type auditedCode struct {
	Code string `db:"code" phi:"pk"`
	Text string `db:"text" phi:"encrypt"`
}

func (auditedCode) TableName() string { return "audited_codes" }

// Large reads record one event per row, in row order, with the primary
// key as Schema.PKString prints it, read after read (the events of large
// reads are built in reused buffers), with or without another sink.
func TestAuditLargeReads(t *testing.T) {
	for _, withSink := range []bool{false, true} {
		t.Run(fmt.Sprint("sink=", withSink), func(t *testing.T) {
			kr := testKeys(t)
			var cfg phidb.Config
			var out bytes.Buffer
			if withSink {
				cfg.AuditSink = auditing.NewJSONSink(&out)
			}
			db := auditedPool(t, pgtest.NewDatabase(t), kr, cfg,
				`CREATE TABLE audited_notes (id uuid PRIMARY KEY, text bytea)`,
				`CREATE TABLE audited_codes (code text PRIMARY KEY, text bytea)`)
			ctx := clinician(context.Background())
			notes := make([]auditedNote, 700)
			codes := make([]auditedCode, 300)
			for i := range notes {
				notes[i] = auditedNote{ID: uuid.New(), Text: fmt.Sprint("note ", i)}
			}
			for i := range codes {
				codes[i] = auditedCode{Code: fmt.Sprintf("c-%03d \"ü\"", i), Text: fmt.Sprint("code ", i)}
			}
			_, err := phidb.InsertMany(ctx, db, notes)
			require.NoError(t, err)
			_, err = phidb.InsertMany(ctx, db, codes)
			require.NoError(t, err)

			var want []string
			for range 3 {
				got, err := phidb.Select[auditedNote](ctx, db, "SELECT * FROM audited_notes ORDER BY id")
				require.NoError(t, err)
				require.Len(t, got, len(notes))
				for _, n := range got {
					want = append(want, n.ID.String())
				}
				gotCodes, err := phidb.Select[auditedCode](ctx, db, "SELECT * FROM audited_codes ORDER BY code")
				require.NoError(t, err)
				require.Len(t, gotCodes, len(codes))
				for _, c := range gotCodes {
					want = append(want, strconv.Quote(c.Code))
				}
			}
			events := storedEvents(t, db)
			var reads []string
			for _, e := range events {
				if e.Action == auditing.ActionRead {
					require.Equal(t, auditing.Actor{ID: "u-1842", Role: "clinician"}, e.Actor)
					require.Equal(t, []string{e.Columns[0], "text"}, e.Columns)
					reads = append(reads, e.PK)
				}
			}
			require.Equal(t, want, reads)
			require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())
			if withSink {
				fromJSON, err := auditing.ReadJSON(strings.NewReader(out.String()))
				require.NoError(t, err)
				require.Equal(t, events, fromJSON)
			}
		})
	}
}

// A large read (its events sealed while it streams) that fails half way,
// or whose events cannot be stored, returns no rows and records no read.
func TestAuditLargeReadFailures(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{},
		`CREATE TABLE audited_notes (id uuid PRIMARY KEY, text bytea)`)
	ctx := clinician(context.Background())
	notes := make([]auditedNote, 1000)
	for i := range notes {
		notes[i] = auditedNote{ID: uuid.Must(uuid.NewV7()), Text: fmt.Sprint("secret note ", i)}
	}
	_, err := phidb.InsertMany(ctx, db, notes)
	require.NoError(t, err)
	before := len(storedEvents(t, db))

	// Row 700 carries row 1's ciphertext: decryption fails after several
	// chunks were sealed.
	_, err = db.Exec(ctx, `UPDATE audited_notes SET text = (SELECT text FROM audited_notes WHERE id = $1) WHERE id = $2`,
		notes[1].ID, notes[700].ID)
	require.NoError(t, err)
	got, err := phidb.Select[auditedNote](ctx, db, "SELECT * FROM audited_notes ORDER BY id")
	require.ErrorIs(t, err, codec.ErrTampered)
	require.Nil(t, got)
	events := storedEvents(t, db)
	require.Len(t, events, before+1, "only the failure is recorded")
	require.Equal(t, auditing.OutcomeError, events[before].Outcome)
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())

	// The rows are fine again (without the broken one); now the sink fails.
	_, err = db.Exec(ctx, `DELETE FROM audited_notes WHERE id = $1`, notes[700].ID)
	require.NoError(t, err)
	failing, err := phidb.New(ctx, db.Config().ConnConfig.ConnString(), phidb.Config{Keys: kr, AuditSink: failSink{}})
	require.NoError(t, err)
	defer failing.Close()
	got, err = phidb.Select[auditedNote](ctx, failing, "SELECT * FROM audited_notes ORDER BY id")
	require.ErrorContains(t, err, "sink down")
	require.Nil(t, got)
	noLeak(t, err, "secret note")

	// And with both, the read works and is recorded once per row.
	got, err = phidb.Select[auditedNote](ctx, db, "SELECT * FROM audited_notes ORDER BY id")
	require.NoError(t, err)
	require.Len(t, got, len(notes)-1)
	events = storedEvents(t, db)
	require.Len(t, events, before+1+len(notes)-1)
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())
}

// A large read that the server fails half way, or whose context ends, leaves
// no sealing goroutine behind and records no read.
func TestAuditLargeReadInterrupted(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{},
		`CREATE TABLE audited_notes (id uuid PRIMARY KEY, text bytea)`)
	ctx := clinician(context.Background())
	notes := make([]auditedNote, 3000)
	for i := range notes {
		notes[i] = auditedNote{ID: uuid.Must(uuid.NewV7()), Text: fmt.Sprint("secret note ", i)}
	}
	_, err := phidb.InsertMany(ctx, db, notes)
	require.NoError(t, err)
	before := len(storedEvents(t, db))

	// Division by zero at row 2500, after several chunks were sealed.
	_, err = phidb.Select[auditedNote](ctx, db,
		"SELECT id, text FROM audited_notes WHERE 1 / (CASE WHEN id = $1 THEN 0 ELSE 1 END) = 1 ORDER BY id", notes[2500].ID)
	require.ErrorContains(t, err, "22012")
	// Contexts that end at various points of the read: the read either
	// fails and records no read, or returns every row, each recorded.
	reads := 0
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond, 60 * time.Millisecond, time.Second} {
		cctx, cancel := context.WithTimeout(ctx, d)
		got, err := phidb.Select[auditedNote](cctx, db, "SELECT id, text FROM audited_notes, pg_sleep(0.00002) ORDER BY id")
		cancel()
		if err == nil {
			require.Len(t, got, len(notes))
			reads += len(got)
		} else {
			require.Nil(t, got)
		}
	}

	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "readAudit")
	}, 2*time.Second, 10*time.Millisecond, "a sealing goroutine is left")
	recorded := 0
	events := storedEvents(t, db)
	for _, e := range events[before:] {
		if e.Outcome == auditing.OutcomeOK {
			recorded++
		}
	}
	require.Equal(t, reads, recorded, "the reads returned, and only those, are recorded")
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())
}

// flakySink fails its second Write.
type flakySink struct{ writes atomic.Int32 }

func (f *flakySink) Write(context.Context, []auditing.Event) error {
	if f.writes.Add(1) == 2 {
		return errors.New("sink down once")
	}
	return nil
}

// With phidb_audit and another sink, phidb_audit is the record: when the
// other sink fails after it, the operation says so (ErrPartialAudit), the
// write stays committed with its events, a read returns no rows, and the
// pool goes on recording without a conflict.
func TestAuditSinkFailsAfterTable(t *testing.T) {
	kr := testKeys(t)
	ctx := clinician(context.Background())
	rows := sampleRows()

	reads := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{AuditSink: &flakySink{}}, everythingDDL)
	_, err := phidb.InsertMany(ctx, reads, rows) // write 1
	require.NoError(t, err)
	got, err := phidb.Select[everything](ctx, reads, "SELECT * FROM everything") // write 2: stored, then the sink fails
	require.ErrorIs(t, err, phidb.ErrPartialAudit)
	require.ErrorContains(t, err, "sink down once")
	require.Nil(t, got)
	got, err = phidb.Select[everything](ctx, reads, "SELECT * FROM everything")
	require.NoError(t, err)
	require.Len(t, got, len(rows))
	events := storedEvents(t, reads)
	require.Len(t, events, 3*len(rows), "the failed read's events are kept: its rows were read from the database")
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{reads.AuditHead()}).OK())

	writes := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{AuditSink: &flakySink{}}, everythingDDL)
	_, err = phidb.InsertMany(ctx, writes, rows[:1]) // write 1
	require.NoError(t, err)
	_, err = phidb.InsertMany(ctx, writes, rows[1:]) // write 2: committed, then the sink fails
	require.ErrorIs(t, err, phidb.ErrPartialAudit)
	var n int
	require.NoError(t, writes.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Equal(t, len(rows), n, "the change is committed")
	require.NoError(t, phidb.Delete[everything](ctx, writes, rows[0].ID))
	events = storedEvents(t, writes)
	require.Len(t, events, len(rows)+1)
	for _, e := range events {
		require.Equal(t, auditing.OutcomeOK, e.Outcome, "no failure recorded for a committed change")
	}
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{writes.AuditHead()}).OK())
}

// A deferred constraint that fails is checked before the audit write (not
// at COMMIT, under the chain's lock), so no sink sees the events of the
// change it stops; and a deferred check that has to wait for another
// transaction holds up nobody else.
func TestAuditDeferredConstraints(t *testing.T) {
	kr := testKeys(t)
	ctx := clinician(context.Background())
	ddl := []string{everythingDDL,
		`CREATE FUNCTION no_bad_ward() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN IF NEW.ward = 'bad' THEN RAISE EXCEPTION 'bad ward'; END IF; RETURN NULL; END $$`,
		`CREATE CONSTRAINT TRIGGER no_bad_ward AFTER INSERT ON everything DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW EXECUTE FUNCTION no_bad_ward()`,
		`ALTER TABLE everything ADD CONSTRAINT one_per_ward UNIQUE (ward) DEFERRABLE INITIALLY DEFERRED`}
	for _, withTable := range []bool{true, false} {
		t.Run(fmt.Sprint("phidb_audit=", withTable), func(t *testing.T) {
			var out syncBuffer
			cs := pgtest.NewDatabase(t)
			db := auditedPool(t, cs, kr, phidb.Config{AuditSink: auditing.NewJSONSink(&out)}, ddl...)
			if !withTable {
				var err error
				db, err = phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditSink: auditing.NewJSONSink(&out)})
				require.NoError(t, err)
				defer db.Close()
			}
			rows := sampleRows()
			rows[0].Ward = "bad"
			require.ErrorContains(t, phidb.Insert(ctx, db, &rows[0]), "bad ward")
			rows[1].Ward = "fine"
			require.NoError(t, phidb.Insert(ctx, db, &rows[1]))

			// A transaction holds ward W; a pool Insert of W must wait for
			// it, outside the chain's lock, so the transaction can commit.
			tx, err := db.Begin(ctx)
			require.NoError(t, err)
			a := sampleRows()[0]
			a.Ward = "W"
			require.NoError(t, phidb.Insert(ctx, tx, &a))
			b := sampleRows()[0]
			b.Ward = "W"
			done := make(chan error, 1)
			go func() { done <- phidb.Insert(ctx, db, &b) }()
			time.Sleep(200 * time.Millisecond) // b waits for tx
			start := time.Now()
			require.NoError(t, tx.Commit(ctx))
			require.Less(t, time.Since(start), 5*time.Second)
			select {
			case err := <-done:
				require.ErrorContains(t, err, "23505")
			case <-time.After(10 * time.Second):
				t.Fatal("the second insert of ward W hangs")
			}

			sinkEvents, err := auditing.ReadJSON(strings.NewReader(out.String()))
			require.NoError(t, err)
			r := auditing.Verify(sinkEvents, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()})
			require.True(t, r.OK(), r.String())
			var outcomes []auditing.Outcome
			for _, e := range sinkEvents {
				outcomes = append(outcomes, e.Outcome)
			}
			require.Equal(t, []auditing.Outcome{auditing.OutcomeError, auditing.OutcomeOK, auditing.OutcomeOK, auditing.OutcomeError}, outcomes)
			if withTable {
				require.Equal(t, sinkEvents, storedEvents(t, db))
			}
		})
	}
}

// With a sink alone, a transaction whose COMMIT fails (a serialization
// failure) after the sink took its events: the sink keeps the attempt, and
// the failure follows it.
func TestAuditSinkOnlyCommitFails(t *testing.T) {
	kr := testKeys(t)
	ctx := clinician(context.Background())
	var out syncBuffer
	cs := pgtest.NewDatabase(t)
	_ = auditedPool(t, cs, kr, phidb.Config{}, everythingDDL)
	db, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditSink: auditing.NewJSONSink(&out)})
	require.NoError(t, err)
	defer db.Close()

	serializable := pgx.TxOptions{IsoLevel: pgx.Serializable}
	t1, err := db.BeginTx(ctx, serializable)
	require.NoError(t, err)
	t2, err := db.BeginTx(ctx, serializable)
	require.NoError(t, err)
	var n int
	for _, tx := range []*phidb.Tx{t1, t2} {
		require.NoError(t, tx.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	}
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, t1, &rows[0]))
	require.NoError(t, phidb.Insert(ctx, t2, &rows[1]))
	require.NoError(t, t1.Commit(ctx))
	err = t2.Commit(ctx)
	require.ErrorContains(t, err, "40001")
	_ = t2.Rollback(ctx)
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Equal(t, 1, n)

	events, err := auditing.ReadJSON(strings.NewReader(out.String()))
	require.NoError(t, err)
	r := auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()})
	require.True(t, r.OK(), r.String())
	var outcomes []string
	for _, e := range events {
		outcomes = append(outcomes, string(e.Action)+" "+string(e.Outcome))
	}
	require.Equal(t, []string{"create ok", "create ok", "create error"}, outcomes, "t1's insert, t2's attempt, its failure")
	require.Equal(t, "SQLSTATE 40001", events[2].Reason)
}

// A pool of one connection: a failed write records its failure, and a
// conflict on the pool's stream is handled, without waiting for a second
// connection. A row someone stored at the pool's next seq is not taken for
// the pool's own: the pool refuses to write after it rather than continue
// from a forged head.
func TestAuditOneConnectionAndForgedHead(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t)+" pool_max_conns=1", kr, phidb.Config{AuditStream: "app"}, everythingDDL)
	ctx, cancel := context.WithTimeout(clinician(context.Background()), 20*time.Second)
	defer cancel()
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, db, &rows[0]))
	start := time.Now()
	require.Error(t, phidb.Insert(ctx, db, &rows[0]), "duplicate key")
	require.Less(t, time.Since(start), 3*time.Second)
	head := db.AuditHead()
	require.Equal(t, uint64(2), head.Seq, "the failure is recorded")

	forger := auditing.ResumeChain("app", testKeys(t).AuditChainMAC(), head.Seq, []byte("not the head"))
	require.NoError(t, forger.Append(ctx, auditing.NewEvents(ctx, auditing.ActionRead, "everything", nil, "x"), auditing.NewPostgresSink(db).Write))
	for range 2 {
		start = time.Now()
		err := phidb.Insert(ctx, db, &rows[1])
		require.ErrorIs(t, err, auditing.ErrConflict)
		require.Less(t, time.Since(start), 3*time.Second)
		require.Equal(t, head, db.AuditHead(), "the forged row is not adopted")
	}
	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Equal(t, 1, n, "no change without its events")
	r := auditing.Verify(storedEvents(t, db), kr.AuditMAC(), []auditing.Checkpoint{head})
	requireProblemAt(t, r, head.Seq+1)
}

func requireProblemAt(t *testing.T, r auditing.Report, seq uint64) {
	t.Helper()
	require.Len(t, r.Problems, 1, r.String())
	require.Equal(t, seq, r.Problems[0].Seq, r.String())
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

// oddSink misbehaves on its second Write, as its field says.
type oddSink struct {
	writes atomic.Int32
	fail   func() error  // returns the error of the second write, or panics
	next   auditing.Sink // if set, gets the other writes
}

func (s *oddSink) Write(ctx context.Context, events []auditing.Event) error {
	if s.writes.Add(1) == 2 {
		return s.fail()
	}
	if s.next != nil {
		return s.next.Write(ctx, events)
	}
	return nil
}

// Sinks that misbehave oddly: one whose error wraps ErrConflict (its own
// store's) does not make the pool record the events twice; one that panics
// after the commit does not put the chain behind phidb_audit; one whose
// error wraps auditing.Stored does not make the chain keep events that no
// sink stored.
func TestAuditOddSinks(t *testing.T) {
	kr := testKeys(t)
	ctx := clinician(context.Background())
	rows := sampleRows()
	for _, tc := range []struct {
		name string
		fail func() error
	}{
		{"conflict", func() error { return fmt.Errorf("mirror: %w", auditing.ErrConflict) }},
		{"panic", func() error { panic("sink bug quoting " + rows[0].Str) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{AuditSink: &oddSink{fail: tc.fail}}, everythingDDL)
			_, err := phidb.InsertMany(ctx, db, rows[:1]) // write 1
			require.NoError(t, err)
			_, err = phidb.InsertMany(ctx, db, rows[1:]) // write 2: committed, then the sink fails
			require.ErrorIs(t, err, phidb.ErrPartialAudit)
			noLeak(t, err, sampleSecrets...)
			got, err := phidb.Select[everything](ctx, db, "SELECT * FROM everything")
			require.NoError(t, err)
			require.Len(t, got, len(rows))
			events := storedEvents(t, db)
			require.Len(t, events, 2*len(rows), "each event once")
			ids := map[uuid.UUID]bool{}
			for _, e := range events {
				require.False(t, ids[e.ID], "event %s twice", e.ID)
				ids[e.ID] = true
			}
			require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())
		})
	}

	t.Run("stored inside a sink error", func(t *testing.T) {
		var out syncBuffer
		sink := &oddSink{fail: func() error { return errors.Join(errors.New("down"), auditing.Stored(errors.New("inner"))) },
			next: auditing.NewJSONSink(&out)}
		cs := pgtest.NewDatabase(t)
		_ = auditedPool(t, cs, kr, phidb.Config{}, everythingDDL)
		db, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditSink: sink})
		require.NoError(t, err)
		defer db.Close()
		require.NoError(t, phidb.Insert(ctx, db, &rows[0]))               // write 1
		require.ErrorContains(t, phidb.Insert(ctx, db, &rows[1]), "down") // write 2 fails: nothing kept
		require.NoError(t, phidb.Insert(ctx, db, &rows[1]))
		events, err := auditing.ReadJSON(strings.NewReader(out.String()))
		require.NoError(t, err)
		r := auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()})
		require.True(t, r.OK(), r.String())
	})
}

// A Tx whose Commit fails before anything is recorded (its context ended)
// is rolled back: calling Commit again cannot commit it without its events.
func TestAuditTxCommitFailsEarly(t *testing.T) {
	kr := testKeys(t)
	db := auditedPool(t, pgtest.NewDatabase(t), kr, phidb.Config{}, everythingDDL)
	ctx := clinician(context.Background())
	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, tx, &rows[0]))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.Error(t, tx.Commit(cctx))
	require.Error(t, tx.Commit(ctx))
	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Zero(t, n)
	for _, e := range storedEvents(t, db) {
		require.NotEqual(t, auditing.OutcomeOK, e.Outcome)
	}
}

// A Tx whose Commit fails records the failure in the name of the actor who
// wrote (whatever the context passed to Commit), through the connection a
// Conn's caller holds, and an aborted transaction's Commit still matches
// pgx.ErrTxCommitRollback.
func TestAuditTxCommitFailure(t *testing.T) {
	kr := testKeys(t)
	ddl := []string{everythingDDL,
		`CREATE FUNCTION no_bad_ward() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN IF NEW.ward = 'bad' THEN RAISE EXCEPTION 'bad ward'; END IF; RETURN NULL; END $$`,
		`CREATE CONSTRAINT TRIGGER no_bad_ward AFTER INSERT ON everything DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW EXECUTE FUNCTION no_bad_ward()`}
	db := auditedPool(t, pgtest.NewDatabase(t)+" pool_max_conns=1", kr, phidb.Config{}, ddl...)
	ctx := clinician(context.Background())
	bad := sampleRows()[0]
	bad.Ward = "bad"

	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, phidb.Insert(ctx, tx, &bad))
	require.ErrorContains(t, tx.Commit(context.Background()), "bad ward")

	c, err := db.Acquire(ctx)
	require.NoError(t, err)
	tx, err = c.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, phidb.Insert(ctx, tx, &bad))
	start := time.Now()
	require.ErrorContains(t, tx.Commit(ctx), "bad ward")
	require.Less(t, time.Since(start), 3*time.Second, "recorded through the caller's connection")

	tx, err = c.Begin(ctx)
	require.NoError(t, err)
	good := sampleRows()[1]
	require.NoError(t, phidb.Insert(ctx, tx, &good))
	_, err = tx.Exec(ctx, "SELECT 1/0")
	require.Error(t, err)
	require.ErrorIs(t, tx.Commit(ctx), pgx.ErrTxCommitRollback)
	c.Release()

	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Zero(t, n)
	events := storedEvents(t, db)
	require.Len(t, events, 3)
	for _, e := range events {
		require.Equal(t, auditing.OutcomeError, e.Outcome)
		require.Equal(t, auditing.Actor{ID: "u-1842", Role: "clinician"}, e.Actor)
		require.Equal(t, "treatment", e.Purpose)
		require.Equal(t, auditing.ActionCreate, e.Action)
	}
	require.True(t, auditing.Verify(events, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}).OK())
}
