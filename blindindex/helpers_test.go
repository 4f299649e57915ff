package blindindex

import (
	"testing"

	"github.com/phidb/phidb/keys"
	"github.com/stretchr/testify/require"
)

func newKeyring(t testing.TB) *keys.Keyring {
	t.Helper()
	kr, err := keys.Generate()
	require.NoError(t, err)
	return kr
}

// newIndex builds the index declared by tag (ParseSpec syntax) over fields.
func newIndex(t testing.TB, kr *keys.Keyring, table, tag string, fields ...string) *Index {
	t.Helper()
	sp, err := ParseSpec(tag)
	require.NoError(t, err)
	sp.Fields = fields
	ix, err := New(kr, table, sp)
	require.NoError(t, err)
	return ix
}

func value(t testing.TB, ix *Index, parts ...string) int64 {
	t.Helper()
	v, err := ix.Value(parts...)
	require.NoError(t, err)
	return v
}

func values(t testing.TB, ix *Index, parts ...string) []int64 {
	t.Helper()
	v, err := ix.Values(parts...)
	require.NoError(t, err)
	return v
}
