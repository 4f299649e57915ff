//go:build race

package blindindex

// raceEnabled reports a -race build, in which the tests over all of Unicode
// sample code points instead of visiting each.
const raceEnabled = true
