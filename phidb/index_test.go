package phidb_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/blindindex"
	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/phidb"
)

// contact has two blind indexes on Email (8 and 32 bits), one with a user
// normalizer on MRN, and a compound index over Name and DOB.
type contact struct {
	ID    uuid.UUID `db:"id" phi:"pk"`
	Email string    `db:"email" phi:"encrypt,index=email_b8:trim+lower:bits=8,index=email_b32:trim+lower:bits=32"`
	MRN   string    `db:"mrn" phi:"encrypt,index=mrn_bidx:mrn_core:bits=16"`
	Name  string    `db:"name" phi:"encrypt"`
	DOB   time.Time `db:"dob" phi:"encrypt"`
	Ward  string    `db:"ward"`
}

func (contact) TableName() string { return "contacts" }

func (contact) BlindIndexes() []blindindex.Spec {
	return []blindindex.Spec{{Name: "name_dob_bidx", Normalizers: "lower", Bits: 16, Fields: []string{"Name", "DOB"}}}
}

const contactDDL = `CREATE TABLE contacts (id uuid PRIMARY KEY, email bytea, mrn bytea, name bytea, dob bytea, ward text,
	email_b8 bigint, email_b32 bigint, mrn_bidx bigint, name_dob_bidx bigint);
	CREATE INDEX ON contacts (email_b8); CREATE INDEX ON contacts (email_b32);
	CREATE INDEX ON contacts (mrn_bidx); CREATE INDEX ON contacts (name_dob_bidx)`

func init() {
	// "MRN-00123" and "123" are the same record number.
	if err := blindindex.Register("mrn_core", func(s string) string {
		return strings.TrimLeft(strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "MRN-"), "0")
	}); err != nil {
		panic(err)
	}
}

// contacts returns n rows over `distinct` email addresses in varied case and
// spacing, so that lookups must normalize and truncated indexes collide.
func contacts(n, distinct int) ([]contact, map[string]int) {
	r := rand.New(rand.NewPCG(7, 9))
	want := map[string]int{}
	out := make([]contact, n)
	for i := range out {
		k := r.IntN(distinct)
		email := fmt.Sprintf("patient%04d@clinic.example", k)
		want[email]++
		switch i % 3 {
		case 1:
			email = strings.ToUpper(email)
		case 2:
			email = "  " + email + " "
		}
		out[i] = contact{Email: email, MRN: fmt.Sprintf("MRN-%05d", i), Name: fmt.Sprintf("Name %d", k),
			DOB: time.Date(1950+k%50, 1, 1, 0, 0, 0, 0, time.UTC), Ward: "W"}
	}
	return out, want
}

func TestLookupExactAt8And32Bits(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, contactDDL)
	const distinct = 400
	rows, want := contacts(10_000, distinct)
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)

	for _, index := range []string{"email_b8", "email_b32"} {
		t.Run(index, func(t *testing.T) {
			total := 0
			for k := 0; k < distinct; k++ {
				email := fmt.Sprintf("patient%04d@clinic.example", k)
				got, err := phidb.LookupIndex[contact](ctx, db, index, strings.ToUpper(email))
				require.NoError(t, err)
				require.Len(t, got, want[email], "lookup of %s", email)
				for _, c := range got {
					require.Equal(t, email, strings.ToLower(strings.TrimSpace(c.Email)))
				}
				total += len(got)
			}
			require.Equal(t, 10_000, total, "every row found exactly once")
			none, err := phidb.LookupIndex[contact](ctx, db, index, "nobody@clinic.example")
			require.NoError(t, err)
			require.Empty(t, none)
		})
	}
	// At 8 bits the index really collides: 400 distinct emails share at most
	// 256 index values, so lookups above had false positives to drop.
	var values int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(DISTINCT email_b8) FROM contacts").Scan(&values))
	require.Less(t, values, distinct)

	// Lookup by field name uses the field's first index.
	got, err := phidb.Lookup[contact](ctx, db, "Email", "patient0001@clinic.example")
	require.NoError(t, err)
	require.Len(t, got, want["patient0001@clinic.example"])

	// The argument form, in SQL the user writes.
	sel, err := phidb.Select[contact](ctx, db, "SELECT * FROM contacts WHERE email_b32 = ANY($1) AND ward = $2",
		phidb.MatchIndex("email_b32", "Patient0002@Clinic.Example"), "W")
	require.NoError(t, err)
	require.Len(t, sel, want["patient0002@clinic.example"])

	// 32 bits is wider than SafeBits allows for 10,000 rows: a warning,
	// naming the index, never a value.
	warnings, err := phidb.CheckBlindIndexes[contact](ctx, db)
	require.NoError(t, err)
	require.NotEmpty(t, warnings)
	require.Contains(t, strings.Join(warnings, "\n"), "email_b32")
	require.NotContains(t, strings.Join(warnings, "\n"), "clinic.example")

	// The lookup uses the btree index.
	var plan []string
	_, err = db.Exec(ctx, "ANALYZE contacts")
	require.NoError(t, err)
	r, err := db.Query(ctx, "EXPLAIN SELECT id, email FROM contacts WHERE email_b32 = ANY($1)", []int64{12345, 67890})
	require.NoError(t, err)
	for r.Next() {
		var line string
		require.NoError(t, r.Scan(&line))
		plan = append(plan, line)
	}
	require.NoError(t, r.Err())
	require.Contains(t, strings.Join(plan, "\n"), "Index", strings.Join(plan, "\n"))
}

func TestNormalizersAndCompound(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, contactDDL)
	dob := time.Date(1984, 2, 29, 0, 0, 0, 0, time.UTC)
	rows := []contact{
		{Email: "ÄLICE@EXAMPLE.COM", MRN: "MRN-00123", Name: "Älice Ünver", DOB: dob},
		{Email: "bob@example.com", MRN: "456", Name: "Bob", DOB: dob},
	}
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)

	for _, q := range []string{"älice@example.com", "A\u0308LICE@example.com", "  Älice@Example.Com"} {
		got, err := phidb.Lookup[contact](ctx, db, "Email", q)
		require.NoError(t, err)
		require.Len(t, got, 1, q)
		require.Equal(t, rows[0].ID, got[0].ID)
	}
	got, err := phidb.Lookup[contact](ctx, db, "MRN", "123")
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, rows[0].ID, got[0].ID)

	got, err = phidb.LookupIndex[contact](ctx, db, "name_dob_bidx", "ÄLICE ÜNVER", dob)
	require.NoError(t, err)
	require.Len(t, got, 1)
	got, err = phidb.LookupIndex[contact](ctx, db, "name_dob_bidx", "Älice Ünver", dob.AddDate(0, 0, 1))
	require.NoError(t, err)
	require.Empty(t, got)

	// Update recomputes the index of a changed field.
	a := got0(t, ctx, db, rows[0].ID)
	a.Email = "alice.new@example.com"
	require.NoError(t, phidb.Update(ctx, db, &a))
	got, err = phidb.Lookup[contact](ctx, db, "Email", "älice@example.com")
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = phidb.Lookup[contact](ctx, db, "Email", "ALICE.NEW@example.com")
	require.NoError(t, err)
	require.Len(t, got, 1)

	_, err = phidb.Lookup[contact](ctx, db, "Ward", "W")
	require.ErrorContains(t, err, "no blind index")
	_, err = phidb.LookupIndex[contact](ctx, db, "name_dob_bidx", "only one part")
	require.ErrorContains(t, err, "2 fields")
}

func got0(t *testing.T, ctx context.Context, db *phidb.Pool, id uuid.UUID) contact {
	c, err := phidb.Get[contact](ctx, db, "SELECT * FROM contacts WHERE id = $1", id)
	require.NoError(t, err)
	return c
}

func TestBlindIndexRotation(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, contactDDL)
	rows, want := contacts(2_000, 100)
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)
	checkAll := func(stage string) {
		t.Helper()
		for email, n := range want {
			got, err := phidb.LookupIndex[contact](ctx, db, "email_b32", email)
			require.NoError(t, err)
			require.Len(t, got, n, "%s: %s", stage, email)
		}
	}
	kr := db.Keys()
	old, _ := kr.PRFKeyIDs()
	_, err = kr.RotatePRF()
	require.NoError(t, err)
	checkAll("after rotation, nothing reindexed")

	var progress int
	res, err := phidb.Reindex[contact](ctx, db, phidb.ReindexOptions{BatchSize: 300, Limit: 1_000, Progress: func(done int, _ any) { progress = done }})
	require.NoError(t, err)
	require.Equal(t, 1_000, res.Rows)
	require.Equal(t, 1_000, progress)
	checkAll("half reindexed")

	res, err = phidb.Reindex[contact](ctx, db, phidb.ReindexOptions{BatchSize: 300, After: res.Last})
	require.NoError(t, err)
	require.Equal(t, 1_000, res.Rows)
	require.NoError(t, kr.DisablePRFKey(old))
	checkAll("all reindexed, old key disabled")
}

func TestBadIndexDeclarations(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, `CREATE TABLE bad (id uuid PRIMARY KEY, email bytea, email_bidx bigint)`)
	cases := []struct {
		name string
		run  func() error
		want string
	}{
		{"unknown normalizer", func() error { return phidb.Insert(ctx, db, &badNorm{Email: "x@example.com"}) }, "nosuch"},
		{"bits out of range", func() error { _, err := phidb.Select[badBits](ctx, db, "SELECT * FROM bad"); return err }, "bits"},
		{"unknown field", func() error { _, err := phidb.Lookup[badField](ctx, db, "Email", "x"); return err }, "Nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			require.ErrorIs(t, err, codec.ErrSchema)
			require.ErrorContains(t, err, tc.want)
			noLeak(t, err, "x@example.com")
		})
	}
}

type badNorm struct {
	ID    uuid.UUID `db:"id" phi:"pk"`
	Email string    `db:"email" phi:"encrypt,index=email_bidx:nosuch"`
}

func (badNorm) TableName() string { return "bad" }

type badBits struct {
	ID    uuid.UUID `db:"id" phi:"pk"`
	Email string    `db:"email" phi:"encrypt,index=email_bidx:lower:bits=65"`
}

func (badBits) TableName() string { return "bad" }

type badField struct {
	ID    uuid.UUID `db:"id" phi:"pk"`
	Email string    `db:"email" phi:"encrypt,index=email_bidx:lower"`
}

func (badField) TableName() string { return "bad" }

func (badField) BlindIndexes() []blindindex.Spec {
	return []blindindex.Spec{{Name: "other_bidx", Fields: []string{"Email", "Nope"}}}
}
