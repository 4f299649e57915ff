package codec_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/keys"
)

// benchRow is a model with one encrypted 32-byte string.
type benchRow struct {
	ID  uuid.UUID `db:"id" phi:"pk"`
	SSN string    `db:"ssn" phi:"encrypt"`
}

func (benchRow) TableName() string { return "patients" }

// bench32 is the 32-byte field value of the benchmarks.
var bench32 = strings.Repeat("0123456789abcdef", 2)

type benchSetup struct {
	c    *codec.Codec
	s    *codec.Schema
	f    *codec.Field
	row  *benchRow
	root reflect.Value
	pk   []byte
	aad  []byte
	pt   []byte // typed plaintext: 0x01 || 32 bytes
	env  []byte
}

func newBench(b *testing.B) *benchSetup {
	b.Helper()
	kr, err := keys.Generate()
	require.NoError(b, err)
	bs := &benchSetup{c: codec.New(kr), row: &benchRow{
		ID:  uuid.MustParse("0190b1f4-7c1e-7000-8000-000000000001"),
		SSN: bench32,
	}}
	bs.s, err = codec.SchemaFor[benchRow]()
	require.NoError(b, err)
	bs.f = fieldByColumn(b, bs.s, "ssn")
	bs.root = reflect.ValueOf(bs.row).Elem()
	bs.pk = bs.s.PKBytes(nil, bs.root)
	bs.aad = bs.f.AAD(nil, bs.pk)
	bs.env, err = bs.c.SealField(bs.s, bs.f, bs.root, bs.pk, new([]byte))
	require.NoError(b, err)
	bs.pt, err = bs.c.Open(bs.env, bs.aad)
	require.NoError(b, err)
	require.Len(b, bs.pt, 33)
	return bs
}

// BenchmarkOpen opens one envelope holding a 32-byte string with a prebuilt
// associated data: the figure for the target "opening one 32-byte field: at
// most 400 ns".
func BenchmarkOpen(b *testing.B) {
	bs := newBench(b)
	b.ReportAllocs()
	b.SetBytes(32)
	for b.Loop() {
		if _, err := bs.c.Open(bs.env, bs.aad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenField is BenchmarkOpen through OpenField into a struct string
// field: it includes building the associated data from the row's primary-key
// bytes (computed once per row, as a reader does) and decoding.
func BenchmarkOpenField(b *testing.B) {
	bs := newBench(b)
	var (
		out  benchRow
		root = reflect.ValueOf(&out).Elem()
		buf  []byte
	)
	b.ReportAllocs()
	b.SetBytes(32)
	for b.Loop() {
		if err := bs.c.OpenField(bs.s, bs.f, root, bs.pk, bs.env, &buf); err != nil {
			b.Fatal(err)
		}
	}
	if out.SSN != bench32 {
		b.Fatalf("opened %q", out.SSN)
	}
}

// BenchmarkSeal seals one 32-byte string (typed plaintext of 33 bytes) with a
// prebuilt associated data.
func BenchmarkSeal(b *testing.B) {
	bs := newBench(b)
	b.ReportAllocs()
	b.SetBytes(32)
	for b.Loop() {
		if _, err := bs.c.Seal(bs.pt, bs.aad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealField seals a struct's 32-byte string field: encoding, building
// the associated data and sealing.
func BenchmarkSealField(b *testing.B) {
	bs := newBench(b)
	var buf []byte
	b.ReportAllocs()
	b.SetBytes(32)
	for b.Loop() {
		if _, err := bs.c.SealField(bs.s, bs.f, bs.root, bs.pk, &buf); err != nil {
			b.Fatal(err)
		}
	}
}
