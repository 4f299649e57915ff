//go:build !race

package blindindex

const raceEnabled = false
