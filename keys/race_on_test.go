//go:build race

package keys

// raceEnabled reports a -race build, in which sync.Pool drops a quarter of
// what is put back on purpose, so allocation counts are not meaningful.
const raceEnabled = true
