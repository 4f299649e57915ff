package phidb

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Insert writes one model, given by pointer, as one INSERT. Fields tagged
// encrypt are sealed and bound to the table, column and primary key; a zero
// uuid.UUID primary key is first set to a new UUIDv7, visible to the caller.
func Insert(ctx context.Context, q Querier, v any) error {
	if reflect.ValueOf(v).Kind() != reflect.Pointer {
		return fmt.Errorf("phidb: Insert needs a pointer to the model, so a generated key can be set; got %T", v)
	}
	m, root, err := writable(v)
	if err != nil {
		return err
	}
	if err := m.fillPK(root); err != nil {
		return err
	}
	var pk, buf []byte
	args, err := m.rowArgs(q.engine().codec, root, make([]any, 0, len(m.columns)), &pk, &buf)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, m.insertSQL, args...); err != nil {
		return fmt.Errorf("phidb: insert into %s: %w", m.s.Table, err)
	}
	return nil
}

// Update writes every column of one model, given by pointer or value, to the
// row with its primary key. It returns an error matching pgx.ErrNoRows when
// no such row exists.
func Update(ctx context.Context, q Querier, v any) error {
	m, root, err := writable(v)
	if err != nil {
		return err
	}
	var pk, buf []byte
	args, err := m.rowArgs(q.engine().codec, root, make([]any, 0, len(m.columns)), &pk, &buf)
	if err != nil {
		return err
	}
	// rowArgs follows field order; UPDATE wants the key last.
	set := args[:0:0]
	var key any
	for i, f := range m.s.Fields {
		if f.PK {
			key = args[i]
		} else {
			set = append(set, args[i])
		}
	}
	tag, err := q.Exec(ctx, m.updateSQL, append(set, key)...)
	if err != nil {
		return fmt.Errorf("phidb: update %s: %w", m.s.Table, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("phidb: update %s pk %s: %w", m.s.Table, m.s.PKString(root), pgx.ErrNoRows)
	}
	return nil
}

// Delete removes the row of model T whose primary key is pk. It returns an
// error matching pgx.ErrNoRows when no such row exists.
func Delete[T any](ctx context.Context, q Querier, pk any) error {
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return err
	}
	tag, err := q.Exec(ctx, m.deleteSQL, pk)
	if err != nil {
		return fmt.Errorf("phidb: delete from %s: %w", m.s.Table, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("phidb: delete from %s: %w", m.s.Table, pgx.ErrNoRows)
	}
	return nil
}

// InsertMany writes rows (structs or pointers to structs) in one round trip
// with COPY. Zero UUID primary keys are set in rows before anything is sent.
// Encryption runs on every CPU for large slices. It returns the number of
// rows written.
func InsertMany[T any](ctx context.Context, q Querier, rows []T) (int64, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return 0, err
	}
	c := q.engine().codec
	n := len(m.columns)
	values := make([]any, len(rows)*n)
	out := make([][]any, len(rows))
	err = parallel(len(rows), func(lo, hi int) error {
		var pk, buf []byte
		for i := lo; i < hi; i++ {
			root, err := structRoot(reflect.ValueOf(&rows[i]).Elem())
			if err != nil {
				return err
			}
			if err := m.fillPK(root); err != nil {
				return err
			}
			if out[i], err = m.rowArgs(c, root, values[i*n:i*n:(i+1)*n], &pk, &buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	written, err := q.CopyFrom(ctx, m.table, m.columns, pgx.CopyFromRows(out))
	if err != nil {
		return written, fmt.Errorf("phidb: insert into %s: %w", m.s.Table, err)
	}
	return written, nil
}

// writable returns the model and struct of a value passed to a write.
func writable(v any) (*model, reflect.Value, error) {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return nil, reflect.Value{}, fmt.Errorf("phidb: nil model")
	}
	root, err := structRoot(rv)
	if err != nil {
		return nil, reflect.Value{}, err
	}
	if rv.Kind() != reflect.Pointer {
		// Copy into addressable memory: field values are read through
		// reflection, and Insert may need to set the key.
		p := reflect.New(root.Type()).Elem()
		p.Set(root)
		root = p
	}
	m, err := modelFor(root.Type())
	return m, root, err
}

// minParallel is the number of items below which splitting work across
// goroutines costs more than it saves.
const minParallel = 256

// parallel calls fn over [0, n) in contiguous chunks, one per CPU when n is
// large, and returns the first error.
func parallel(n int, fn func(lo, hi int) error) error {
	workers := runtime.GOMAXPROCS(0)
	if n < minParallel || workers < 2 {
		return fn(0, n)
	}
	if workers > n/(minParallel/2) {
		workers = n / (minParallel / 2)
	}
	chunk := (n + workers - 1) / workers
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = fn(lo, hi)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
