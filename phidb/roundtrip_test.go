package phidb_test

import (
	"bytes"
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/phidb"
)

type visit struct {
	Reason string            `json:"reason"`
	Codes  []string          `json:"codes"`
	Vitals map[string]string `json:"vitals"`
}

// everything has one encrypted field of each supported type.
type everything struct {
	ID     uuid.UUID  `db:"id" phi:"pk"`
	Str    string     `db:"str" phi:"encrypt"`
	Bytes  []byte     `db:"bytes" phi:"encrypt"`
	Bool   bool       `db:"bool" phi:"encrypt"`
	Int    int        `db:"int" phi:"encrypt"`
	Int8   int8       `db:"int8" phi:"encrypt"`
	Int16  int16      `db:"int16" phi:"encrypt"`
	Int32  int32      `db:"int32" phi:"encrypt"`
	Int64  int64      `db:"int64" phi:"encrypt"`
	Uint   uint       `db:"uint" phi:"encrypt"`
	Uint8  uint8      `db:"uint8" phi:"encrypt"`
	Uint16 uint16     `db:"uint16" phi:"encrypt"`
	Uint32 uint32     `db:"uint32" phi:"encrypt"`
	Uint64 uint64     `db:"uint64" phi:"encrypt"`
	F32    float32    `db:"f32" phi:"encrypt"`
	F64    float64    `db:"f64" phi:"encrypt"`
	Time   time.Time  `db:"time" phi:"encrypt"`
	UUID   uuid.UUID  `db:"uuid" phi:"encrypt"`
	JSON   visit      `db:"json" phi:"encrypt"`
	PStr   *string    `db:"pstr" phi:"encrypt"`
	PInt   *int64     `db:"pint" phi:"encrypt"`
	PTime  *time.Time `db:"ptime" phi:"encrypt"`
	PJSON  *visit     `db:"pjson" phi:"encrypt"`
	Hidden *string    `db:"hidden" phi:"encrypt,hidenull"`
	Ward   string     `db:"ward"`
}

func (everything) TableName() string { return "everything" }

const everythingDDL = `CREATE TABLE everything (
	id uuid PRIMARY KEY,
	str bytea, bytes bytea, bool bytea, int bytea, int8 bytea, int16 bytea, int32 bytea, int64 bytea,
	uint bytea, uint8 bytea, uint16 bytea, uint32 bytea, uint64 bytea, f32 bytea, f64 bytea,
	time bytea, uuid bytea, json bytea, pstr bytea, pint bytea, ptime bytea, pjson bytea, hidden bytea,
	ward text)`

func ptr[T any](v T) *T { return &v }

// sampleRows returns rows whose secret strings are unique enough to search
// for in raw database bytes.
func sampleRows() []everything {
	when := time.Date(1961, 4, 12, 6, 7, 8, 123456789, time.FixedZone("X", 3*3600))
	return []everything{
		{
			Str: "Zebulon Quartermaine", Bytes: []byte("secret-bytes-7741"), Bool: true,
			Int: math.MinInt64, Int8: math.MinInt8, Int16: math.MaxInt16, Int32: -7, Int64: math.MaxInt64,
			Uint: math.MaxUint64, Uint8: 255, Uint16: 65535, Uint32: 4000000000, Uint64: 1,
			F32: 3.25, F64: math.Pi, Time: when, UUID: uuid.MustParse("0b7e3c2a-1111-4222-8333-944455556666"),
			JSON: visit{Reason: "Kawasaki disease follow-up", Codes: []string{"M30.3"}, Vitals: map[string]string{"bp": "121/79"}},
			PStr: ptr("Penicillin allergy"), PInt: ptr(int64(-42)), PTime: ptr(when.Add(time.Hour)),
			PJSON: &visit{Reason: "Tetralogy of Fallot"}, Hidden: ptr("hidden-remark-9912"), Ward: "B2",
		},
		{Str: "", Bytes: []byte{}, Ward: "C3"}, // zero values and NULLs
	}
}

var sampleSecrets = []string{"Zebulon Quartermaine", "secret-bytes-7741", "Kawasaki", "121/79", "Penicillin allergy",
	"Tetralogy of Fallot", "hidden-remark-9912", "M30.3"}

func normalize(e everything) everything {
	e.Time = e.Time.UTC()
	if e.PTime != nil {
		e.PTime = ptr(e.PTime.UTC())
	}
	if e.Bytes == nil {
		e.Bytes = []byte{}
	}
	return e
}

func TestRoundTripEveryType(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	rows := sampleRows()
	for i := range rows {
		require.NoError(t, phidb.Insert(ctx, db, &rows[i]))
		require.NotEqual(t, uuid.Nil, rows[i].ID, "a zero UUID key gets a UUIDv7")
		require.Equal(t, uuid.Version(7), rows[i].ID.Version())
	}
	for _, want := range rows {
		got, err := phidb.Get[everything](ctx, db, "SELECT * FROM everything WHERE id = $1", want.ID)
		require.NoError(t, err)
		require.Equal(t, normalize(want), normalize(got))
	}
	all, err := phidb.Select[everything](ctx, db, "SELECT * FROM everything ORDER BY ward")
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, normalize(rows[0]), normalize(all[0]))
	require.Nil(t, all[1].PStr)
	require.Nil(t, all[1].Hidden)

	// The NULL of a hidenull field is an envelope; a plain nil pointer is NULL.
	var pstrNull, hiddenNull bool
	require.NoError(t, db.QueryRow(ctx, "SELECT pstr IS NULL, hidden IS NULL FROM everything WHERE id = $1", rows[1].ID).Scan(&pstrNull, &hiddenNull))
	require.True(t, pstrNull)
	require.False(t, hiddenNull)
}

func TestRoundTripInTxAndUpdate(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	rows := sampleRows()
	n, err := phidb.InsertMany(ctx, tx, rows)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	for _, r := range rows {
		require.NotEqual(t, uuid.Nil, r.ID)
	}
	got, err := phidb.Get[everything](ctx, tx, "SELECT * FROM everything WHERE id = $1", rows[0].ID)
	require.NoError(t, err)
	require.Equal(t, normalize(rows[0]), normalize(got))

	got.Str, got.PStr, got.Hidden = "Updated Name", nil, nil
	require.NoError(t, phidb.Update(ctx, tx, &got))
	again, err := phidb.Get[everything](ctx, tx, "SELECT * FROM everything WHERE id = $1", got.ID)
	require.NoError(t, err)
	require.Equal(t, "Updated Name", again.Str)
	require.Nil(t, again.PStr)
	require.NoError(t, tx.Commit(ctx))

	all, err := phidb.Select[everything](ctx, db, "SELECT * FROM everything")
	require.NoError(t, err)
	require.Len(t, all, 2)

	require.NoError(t, phidb.Delete[everything](ctx, db, got.ID))
	_, err = phidb.Get[everything](ctx, db, "SELECT * FROM everything WHERE id = $1", got.ID)
	require.ErrorIs(t, err, pgx.ErrNoRows)
	require.ErrorIs(t, phidb.Delete[everything](ctx, db, got.ID), pgx.ErrNoRows)
	require.ErrorIs(t, phidb.Update(ctx, db, &got), pgx.ErrNoRows)
}

func TestRolledBackTxLeavesNothing(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, tx, &rows[0]))
	_, err = phidb.InsertMany(ctx, tx, rows[1:])
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))

	var n int
	require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM everything").Scan(&n))
	require.Zero(t, n)
	_, err = phidb.Get[everything](ctx, db, "SELECT * FROM everything WHERE id = $1", rows[0].ID)
	require.ErrorIs(t, err, pgx.ErrNoRows)
}

// The raw bytes PostgreSQL holds contain none of the plaintext.
func TestDatabaseHoldsNoPlaintext(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	rows := sampleRows()
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)
	r := rows[0]
	r.ID = uuid.Nil
	require.NoError(t, phidb.Insert(ctx, db, &r)) // the single-row path too (new key)
	for _, r := range rows {
		require.NoError(t, phidb.Update(ctx, db, &r))
	}

	raw, err := db.Query(ctx, "SELECT * FROM everything")
	require.NoError(t, err)
	var dump []byte
	for raw.Next() {
		for _, v := range raw.RawValues() {
			dump = append(dump, v...)
			dump = append(dump, 0)
		}
	}
	require.NoError(t, raw.Err())
	var text string
	require.NoError(t, db.QueryRow(ctx, "SELECT string_agg(e::text, '|') FROM everything e").Scan(&text))
	dump = append(dump, text...)
	require.Contains(t, string(dump), "B2", "plain columns stay plain (the search works)")
	for _, s := range sampleSecrets {
		require.False(t, bytes.Contains(dump, []byte(s)), "plaintext %q found in the database", s)
	}
}

func TestGetErrors(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, db, &rows[0]))

	_, err := phidb.Get[everything](ctx, db, "SELECT str FROM everything")
	require.ErrorContains(t, err, `primary key "id"`)
	noLeak(t, err, sampleSecrets...)

	_, err = phidb.Get[everything](ctx, db, "SELECT id, str, 1 AS extra FROM everything")
	require.ErrorContains(t, err, `"extra"`)

	_, err = phidb.Get[everything](ctx, db, "SELECT id, ward AS str FROM everything")
	require.ErrorContains(t, err, "not bytea")

	// Selecting a subset is fine: unselected fields stay zero.
	got, err := phidb.Get[everything](ctx, db, "SELECT id, str FROM everything")
	require.NoError(t, err)
	require.Equal(t, rows[0].Str, got.Str)
	require.Zero(t, got.Int)

	// A NULL in an encrypted column of a non-pointer field.
	_, err = db.Exec(ctx, "UPDATE everything SET int = NULL")
	require.NoError(t, err)
	_, err = phidb.Get[everything](ctx, db, "SELECT id, int FROM everything")
	require.ErrorIs(t, err, codec.ErrTypeMismatch)

	require.ErrorContains(t, phidb.Insert(ctx, db, rows[0]), "pointer")
	var nilRow *everything
	require.Error(t, phidb.Insert(ctx, db, nilRow))
}

// The simple protocol returns bytea as hex text; decryption still works.
func TestSimpleProtocol(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	rows := sampleRows()
	require.NoError(t, phidb.Insert(ctx, db, &rows[0]))
	got, err := phidb.Get[everything](ctx, db, "SELECT * FROM everything WHERE id = $1", pgx.QueryExecModeSimpleProtocol, rows[0].ID)
	require.NoError(t, err)
	require.Equal(t, normalize(rows[0]), normalize(got))
}

func TestBadModels(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t)
	type noTable struct {
		ID   uuid.UUID `db:"id" phi:"pk"`
		Name string    `db:"name" phi:"encrypt"`
	}
	_, err := phidb.Select[noTable](ctx, db, "SELECT 1")
	require.ErrorIs(t, err, codec.ErrSchema)
	require.ErrorContains(t, err, "TableName")

	type badTag struct {
		ID   uuid.UUID `db:"id" phi:"pk"`
		Name string    `db:"name" phi:"encrpyt"`
	}
	_, err = phidb.Select[badTag](ctx, db, "SELECT 1")
	require.ErrorIs(t, err, codec.ErrSchema)
	require.ErrorContains(t, err, "encrpyt")

	type badType struct {
		ID uuid.UUID `db:"id" phi:"pk"`
		Ch chan int  `db:"ch" phi:"encrypt"`
	}
	_, err = phidb.Select[badType](ctx, db, "SELECT 1")
	require.ErrorIs(t, err, codec.ErrSchema)
	require.True(t, errors.Is(err, codec.ErrSchema))
}
