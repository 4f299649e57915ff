package phidb_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/phidb"
)

// Every way of damaging or moving a ciphertext fails with a matchable error,
// never a panic and never a wrong value.
func TestTamperedCiphertexts(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, everythingDDL)
	rows := sampleRows()
	rows[1].PStr = ptr("second row secret")
	_, err := phidb.InsertMany(ctx, db, rows)
	require.NoError(t, err)
	a, b := rows[0].ID, rows[1].ID

	cases := []struct {
		name   string
		sql    string // $1 = row a, $2 = row b; each damages row a's str
		target error
	}{
		{"copied from another row", "UPDATE everything SET str = (SELECT str FROM everything WHERE id = $2) WHERE id = $1", codec.ErrTampered},
		{"copied from another column", "UPDATE everything SET pstr = str WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrTampered},
		{"one bit flipped", "UPDATE everything SET str = set_bit(str, 300, 1 - get_bit(str, 300)) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrTampered},
		{"tag bit flipped", "UPDATE everything SET str = set_bit(str, octet_length(str)*8-1, 1 - get_bit(str, octet_length(str)*8-1)) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrTampered},
		{"truncated by one byte", "UPDATE everything SET str = substring(str from 1 for octet_length(str)-1) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrTampered},
		{"truncated to 10 bytes", "UPDATE everything SET str = substring(str from 1 for 10) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrTampered},
		{"unknown format byte", "UPDATE everything SET str = set_byte(str, 0, 7) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrUnknownFormat},
		{"unknown tink prefix", "UPDATE everything SET str = set_byte(str, 1, 0) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrUnknownFormat},
		{"empty value", "UPDATE everything SET str = ''::bytea WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrUnknownFormat},
		{"unknown key id", "UPDATE everything SET str = set_byte(str, 5, get_byte(str, 5) # 255) WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrUnknownKey},
		{"plaintext written around phidb", "UPDATE everything SET str = convert_to('Zebulon Quartermaine', 'UTF8') WHERE id = $1 AND $2::uuid IS NOT NULL", codec.ErrUnknownFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := db.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx)
			tag, err := tx.Exec(ctx, tc.sql, a, b)
			require.NoError(t, err)
			require.EqualValues(t, 1, tag.RowsAffected())

			_, err = phidb.Get[everything](ctx, tx, "SELECT * FROM everything WHERE id = $1", a)
			require.ErrorIs(t, err, tc.target)
			var fe *codec.FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, "everything", fe.Table)
			require.Contains(t, []string{"str", "pstr"}, fe.Column)
			require.Equal(t, a.String(), fe.PK)
			noLeak(t, err, append(sampleSecrets, "second row secret")...)

			_, err = phidb.Select[everything](ctx, tx, "SELECT * FROM everything")
			require.ErrorIs(t, err, tc.target, "Select fails as a whole: no partly decrypted result")

			// The untouched row still reads.
			got, err := phidb.Get[everything](ctx, tx, "SELECT * FROM everything WHERE id = $1", b)
			require.NoError(t, err)
			require.Equal(t, "second row secret", *got.PStr)
		})
	}
}

// The domain of FORMAT.md makes the server refuse plaintext too.
func TestCiphertextDomainRefusesPlaintext(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, phidb.CiphertextDomainSQL,
		`CREATE TABLE guarded (id uuid PRIMARY KEY, name phidb_ciphertext, ward text)`)
	p := &patientG{Name: "Ottoline Fairweather", Ward: "A1"}
	require.NoError(t, phidb.Insert(ctx, db, p))
	got, err := phidb.Get[patientG](ctx, db, "SELECT * FROM guarded WHERE id = $1", p.ID)
	require.NoError(t, err)
	require.Equal(t, p.Name, got.Name)

	_, err = db.Exec(ctx, "UPDATE guarded SET name = $1", []byte("Ottoline Fairweather"))
	require.Error(t, err)
	require.ErrorContains(t, err, "23514")
	noLeak(t, err, "Ottoline")
}

type patientG struct {
	ID   uuid.UUID `db:"id" phi:"pk"`
	Name string    `db:"name" phi:"encrypt"`
	Ward string    `db:"ward"`
}

func (patientG) TableName() string { return "guarded" }
