package phidb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/phidb"
)

// mayFail is an encrypted JSON value whose encoding fails when Bad is set.
type mayFail struct{ Bad bool }

func (m mayFail) MarshalJSON() ([]byte, error) {
	if m.Bad {
		return nil, errors.New("cannot encode this value")
	}
	return []byte(`{}`), nil
}

type manyRow struct {
	ID   uuid.UUID `db:"id" phi:"pk"`
	Name string    `db:"name" phi:"encrypt"`
	F    mayFail   `db:"f" phi:"encrypt"`
}

func (manyRow) TableName() string { return "many_rows" }

// InsertMany seals every chunk exactly once whether pgx's goroutine or the
// workers (GOMAXPROCS > 2) seal it, and a row that cannot be sealed, in any
// chunk, aborts the whole COPY.
func TestInsertManyChunksAndWorkers(t *testing.T) {
	ctx := context.Background()
	db, _ := newPool(t, `CREATE TABLE many_rows (id uuid PRIMARY KEY, name bytea, f bytea)`)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	const n = 2000 // several chunks, the last one partial
	for _, procs := range []int{1, 2, 3, 8} {
		t.Run(fmt.Sprint("GOMAXPROCS=", procs), func(t *testing.T) {
			runtime.GOMAXPROCS(procs)
			_, err := db.Exec(ctx, "TRUNCATE many_rows")
			require.NoError(t, err)
			rows := make([]manyRow, n)
			for i := range rows {
				rows[i].Name = fmt.Sprint("name ", i)
			}
			w, err := phidb.InsertMany(ctx, db, rows)
			require.NoError(t, err)
			require.EqualValues(t, n, w)
			got, err := phidb.Select[manyRow](ctx, db, "SELECT * FROM many_rows ORDER BY id")
			require.NoError(t, err)
			// Workers fill keys chunk by chunk in parallel: compare in key order.
			slices.SortFunc(rows, func(a, b manyRow) int { return bytes.Compare(a.ID[:], b.ID[:]) })
			require.Equal(t, rows, got)

			for _, bad := range []int{0, 255, 256, 1999} {
				_, err := db.Exec(ctx, "TRUNCATE many_rows")
				require.NoError(t, err)
				rows := make([]manyRow, n)
				rows[bad].F.Bad = true
				_, err = phidb.InsertMany(ctx, db, rows)
				var fe *codec.FieldError
				require.ErrorAs(t, err, &fe, "bad row %d", bad)
				require.Equal(t, "f", fe.Column)
				var count int
				require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM many_rows").Scan(&count))
				require.Zero(t, count, "nothing written when row %d fails", bad)
			}
		})
	}
}
