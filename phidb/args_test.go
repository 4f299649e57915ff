package phidb_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

// argRow has encrypted columns of plain bytea and of the phidb_ciphertext
// domain, nullable and not, and a hidenull field.
type argRow struct {
	ID     uuid.UUID `db:"id" phi:"pk"`
	Name   string    `db:"name" phi:"encrypt"`
	Note   *string   `db:"note" phi:"encrypt"`
	GName  string    `db:"gname" phi:"encrypt"`
	GNote  *string   `db:"gnote" phi:"encrypt"`
	Hidden *string   `db:"hidden" phi:"encrypt,hidenull"`
	Ward   string    `db:"ward"`
}

func (argRow) TableName() string { return "arg_rows" }

const argRowDDL = `CREATE TABLE arg_rows (id uuid PRIMARY KEY, name bytea NOT NULL, note bytea,
	gname phidb_ciphertext NOT NULL, gnote phidb_ciphertext, hidden bytea NOT NULL, ward text)`

// Envelopes reach PostgreSQL as bytea, and nil pointers as NULL, in every
// pgx query execution mode and through COPY: rowArgs hands them to pgx as
// *codec.Envelope, which pgx encodes through pgtype.BytesValuer where it has
// a bytea plan and through the underlying []byte elsewhere.
func TestEnvelopeArgsEveryExecMode(t *testing.T) {
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			kr, err := keys.Generate()
			require.NoError(t, err)
			cs := pgtest.NewDatabase(t) + " default_query_exec_mode=" + mode
			db, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, SystemActor: &auditing.Actor{ID: "phidb-tests", Role: "system"}})
			require.NoError(t, err)
			t.Cleanup(db.Close)
			for _, q := range []string{phidb.CiphertextDomainSQL, argRowDDL} {
				_, err := db.Exec(ctx, q)
				require.NoError(t, err, q)
			}

			s := func(v string) *string { return &v }
			a := argRow{Name: "Ada Lovelace", GName: "Ada G", Ward: "A"} // nil pointers
			require.NoError(t, phidb.Insert(ctx, db, &a))
			b := argRow{Name: "Bo", Note: s("note b"), GName: "Bo G", GNote: s("gnote b"), Hidden: s("hidden b"), Ward: "B"}
			require.NoError(t, phidb.Insert(ctx, db, &b))
			many := []argRow{
				{Name: "Cy", GName: "Cy G", Ward: "C"},
				{Name: "Di", Note: s("note d"), GName: "Di G", GNote: s("gnote d"), Hidden: s("hidden d"), Ward: "D"},
			}
			n, err := phidb.InsertMany(ctx, db, many)
			require.NoError(t, err)
			require.EqualValues(t, 2, n)
			// Update sets a's pointers and clears b's.
			a.Note, a.GNote, a.Hidden, a.Name = s("note a"), s("gnote a"), s("hidden a"), "Ada King"
			require.NoError(t, phidb.Update(ctx, db, &a))
			b.Note, b.GNote, b.Hidden = nil, nil, nil
			require.NoError(t, phidb.Update(ctx, db, b))

			want := map[uuid.UUID]argRow{a.ID: a, b.ID: b, many[0].ID: many[0], many[1].ID: many[1]}
			got, err := phidb.Select[argRow](ctx, db, "SELECT * FROM arg_rows")
			require.NoError(t, err)
			require.Len(t, got, len(want))
			for _, g := range got {
				require.Equal(t, want[g.ID], g)
			}

			// What the server holds: envelopes where a value is set, NULL
			// for nil pointers, an envelope for a nil hidenull pointer.
			for id, w := range want {
				var name, note, gname, gnote, hidden []byte
				err := db.QueryRow(ctx, "SELECT name, note, gname, gnote, hidden FROM arg_rows WHERE id = $1", id).
					Scan(&name, &note, &gname, &gnote, &hidden)
				require.NoError(t, err)
				for col, env := range map[string][]byte{"name": name, "gname": gname, "hidden": hidden} {
					requireEnvelope(t, kr, env, col)
				}
				for col, c := range map[string]struct {
					env []byte
					set bool
				}{"note": {note, w.Note != nil}, "gnote": {gnote, w.GNote != nil}} {
					if c.set {
						requireEnvelope(t, kr, c.env, col)
					} else {
						require.Nil(t, c.env, "%s of a nil pointer must be NULL", col)
					}
				}
			}
		})
	}
}

func requireEnvelope(t *testing.T, kr *keys.Keyring, env []byte, col string) {
	t.Helper()
	require.GreaterOrEqual(t, len(env), codec.Overhead, col)
	require.Equal(t, codec.Version, env[0], col)
	require.Equal(t, byte(0x01), env[1], col)
	require.Equal(t, kr.PrimaryDataKeyID(), codec.KeyID(env), col)
}
