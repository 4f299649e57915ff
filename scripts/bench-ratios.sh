#!/usr/bin/env bash
# bench-ratios.sh: measures phidb against raw pgx, side by side, and checks
# the ratios against their targets.
#
#   Select10k      phidb.Select of 10,000 rows (4 encrypted strings)
#                  / pgx.CollectRows(RowToStructByName) of the same text   <= 1.3
#   InsertMany10k  phidb.InsertMany of 10,000 rows
#                  / pgx CopyFrom of the same plaintext rows               <= 1.5
#   Select10kAudit Select10k with the synchronous PostgreSQL audit sink
#                  / the same Select with auditing off                     <= 1.3
#   Lookup100k     phidb.Lookup of one row in 100,000 via a blind index
#                  / pgx equality lookup on an indexed plaintext column    <= 1.3
#   blindindex     BenchmarkValue: one index value                         <= 500 ns/op
#   auditing       BenchmarkVerify                                         >= 200,000 events/s
#                  (pgx-copy-uuid, the baseline passing the key as
#                  uuid.UUID instead of [16]byte, is printed for information)
#   codec Open     BenchmarkOpen in ./codec, if it exists                  <= 400 ns/op
#
# Usage: scripts/bench-ratios.sh
# Environment:
#   ROUNDS=6        runs of the phidb benchmarks; every one runs both sides of both
#                   benchmarks, so the sides are interleaved round by round
#   COUNT=2         -count within each invocation
#   BENCHTIME=20x   -benchtime of the phidb benchmarks
#   CODEC_BENCHTIME=1s, CODEC_COUNT=5   for codec's BenchmarkOpen
#   GO=go           the go command (falls back to /usr/local/go/bin/go)
#
# Why rounds: with -count N, go test runs each sub-benchmark N times back to
# back (Select10k/phidb N times, then Select10k/pgx N times), so on a noisy
# machine a burst of load can land on one side only. Repeating the whole
# invocation ROUNDS times alternates the sides; every side gets ROUNDS*COUNT
# samples. The verdict is on the ratio of the two sides' medians; the median
# of the paired per-run ratios (k-th run of one side against the k-th run of
# the other, from the same round) is printed next to it as a check on noise.
#
# The phidb test binary is built once (go test -c) and run ROUNDS times with
# the flags above, so a source edit during the run cannot mix two versions.
#
# Needs only bash, awk and Go (no benchstat). Exit status: 0 when every
# target passes, 1 when one fails, 2 when a benchmark could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
COUNT=${COUNT:-2}
BENCHTIME=${BENCHTIME:-20x}
LOOKUP_BENCHTIME=${LOOKUP_BENCHTIME:-3000x}
CODEC_BENCHTIME=${CODEC_BENCHTIME:-1s}
CODEC_COUNT=${CODEC_COUNT:-5}
GO=${GO:-go}
if ! command -v "$GO" >/dev/null 2>&1; then
	GO=/usr/local/go/bin/go
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
raw=$work/raw.txt

echo "# $(date -u '+%Y-%m-%d %H:%M UTC')  $($GO version)"
echo "# nproc=$(nproc)  cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)"
echo "# commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
echo "# ROUNDS=$ROUNDS COUNT=$COUNT BENCHTIME=$BENCHTIME"

# The test binary is built once, so every round runs the same code even if
# the sources change meanwhile; running it is what go test -bench does.
echo "## $GO test -c -o $work/phidb.test ./phidb/"
if ! $GO test -c -o "$work/phidb.test" ./phidb/; then
	echo "bench-ratios: cannot build the phidb test binary" >&2
	exit 2
fi
for r in $(seq 1 "$ROUNDS"); do
	echo "## round $r/$ROUNDS: go test -run '^\$' -bench 'Select10k|InsertMany10k' -count $COUNT -benchtime $BENCHTIME ./phidb/"
	if ! (cd phidb && "$work/phidb.test" -test.run '^$' -test.bench 'Select10k|InsertMany10k' \
		-test.count "$COUNT" -test.benchtime "$BENCHTIME") | tee -a "$raw"; then
		echo "bench-ratios: the benchmarks failed in round $r" >&2
		exit 2
	fi
done
# One lookup is a single round trip: run many per sample. The 100k-row
# setup is paid once per invocation.
echo "## go test -run '^\$' -bench 'Lookup100k' -count $ROUNDS -benchtime $LOOKUP_BENCHTIME ./phidb/"
if ! (cd phidb && "$work/phidb.test" -test.run '^$' -test.bench 'Lookup100k' \
	-test.count "$ROUNDS" -test.benchtime "$LOOKUP_BENCHTIME") | tee -a "$raw"; then
	echo "bench-ratios: the lookup benchmark failed" >&2
	exit 2
fi
echo "## go test -run '^\$' -bench 'BenchmarkValue\$' -count 5 ./blindindex/  and  -bench 'BenchmarkVerify\$' ./auditing/"
if ! { $GO test -run '^$' -bench 'BenchmarkValue$' -count 5 ./blindindex/ && \
	$GO test -run '^$' -bench 'BenchmarkVerify$' -count 3 ./auditing/; } | tee -a "$raw"; then
	echo "bench-ratios: blindindex or auditing benchmark failed" >&2
	exit 2
fi

codec_bench=0
if grep -qs '^func BenchmarkOpen(' codec/*_test.go; then
	codec_bench=1
	echo "## $GO test -run '^\$' -bench 'BenchmarkOpen\$' -count $CODEC_COUNT -benchtime $CODEC_BENCHTIME ./codec/"
	if ! $GO test -run '^$' -bench 'BenchmarkOpen$' -count "$CODEC_COUNT" -benchtime "$CODEC_BENCHTIME" ./codec/ | tee -a "$raw"; then
		echo "bench-ratios: codec benchmark failed" >&2
		exit 2
	fi
fi

echo
awk -v codec_bench="$codec_bench" '
# Benchmark lines: Name-P  N  X ns/op  [Y B/op  Z allocs/op]
/^Benchmark/ && / ns\/op/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	if (!(name in seen)) { seen[name] = 1; order[++nnames] = name }
	for (i = 3; i <= NF; i++) {
		if ($i == "ns/op")     { ns[name, ++nns[name]] = $(i-1) }
		if ($i == "B/op")      { bo[name, ++nbo[name]] = $(i-1) }
		if ($i == "allocs/op") { al[name, ++nal[name]] = $(i-1) }
		if ($i == "events/s")  { ev[name, ++nev[name]] = $(i-1) }
	}
}

# median of arr[name, 1..n]
function median(arr, name, n,    v, i, j, t) {
	if (n == 0) return -1
	for (i = 1; i <= n; i++) v[i] = arr[name, i] + 0
	for (i = 2; i <= n; i++) {
		t = v[i]
		for (j = i - 1; j >= 1 && v[j] > t; j--) v[j+1] = v[j]
		v[j+1] = t
	}
	return (n % 2) ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
}

function num(v, unit) {
	if (v < 0) return sprintf("%12s %s", "-", unit)
	return sprintf((v < 100) ? "%12.1f %s" : "%12.0f %s", v, unit)
}

function side(name,    m) {
	m = median(ns, name, nns[name])
	printf "  %-34s %s  %s  %s  (n=%d)\n", name, num(m, "ns/op"),
		num(median(bo, name, nbo[name]), "B/op"), num(median(al, name, nal[name]), "allocs/op"), nns[name]
	return m
}

function ratio(label, a, b, target,    ma, mb, r, verdict, k, np, pr) {
	print label
	if (nns[a] == 0 || nns[b] == 0) {
		printf "  MISSING: no results for %s or %s\n\n", a, b
		failed = 1
		return
	}
	ma = side(a)
	mb = side(b)
	r = ma / mb
	verdict = (r <= target) ? "PASS" : "FAIL"
	if (verdict == "FAIL") failed = 1
	# k-th run of a against k-th run of b: adjacent in time (same round).
	np = (nns[a] < nns[b]) ? nns[a] : nns[b]
	for (k = 1; k <= np; k++) pr["p", k] = ns[a, k] / ns[b, k]
	printf "  ratio %.2f  target <= %.2f  %s   (median of %d paired per-run ratios: %.2f, range %.2f-%.2f)\n\n",
		r, target, verdict, np, median(pr, "p", np), minof(pr, "p", np), maxof(pr, "p", np)
}

function minof(arr, name, n,    i, m) { m = arr[name, 1]; for (i = 2; i <= n; i++) if (arr[name, i] < m) m = arr[name, i]; return m }
function maxof(arr, name, n,    i, m) { m = arr[name, 1]; for (i = 2; i <= n; i++) if (arr[name, i] > m) m = arr[name, i]; return m }

END {
	print "=== summary (medians) ==="
	ratio("Select10k: phidb.Select vs pgx.CollectRows", "BenchmarkSelect10k/phidb", "BenchmarkSelect10k/pgx", 1.3)
	ratio("InsertMany10k: phidb.InsertMany vs pgx CopyFrom (key in binary form, as phidb sends it)", "BenchmarkInsertMany10k/phidb", "BenchmarkInsertMany10k/pgx-copy", 1.5)
	if (nns["BenchmarkInsertMany10k/pgx-copy-uuid"] > 0) {
		print "  for information, pgx CopyFrom with the key as uuid.UUID (pgx encodes it through driver.Valuer):"
		m = side("BenchmarkInsertMany10k/pgx-copy-uuid")
		printf "  phidb / pgx-copy-uuid = %.2f (no target)\n\n", median(ns, "BenchmarkInsertMany10k/phidb", nns["BenchmarkInsertMany10k/phidb"]) / m
	}
	ratio("Select10kAudit: Select with the synchronous PostgreSQL audit sink vs auditing off", "BenchmarkSelect10kAudit/audit-postgres", "BenchmarkSelect10kAudit/audit-off", 1.3)
	ratio("Lookup100k: phidb.Lookup through a blind index vs pgx on an indexed plaintext column", "BenchmarkLookup100k/phidb", "BenchmarkLookup100k/pgx", 1.3)
	print "blindindex BenchmarkValue (one index value of a 20-byte ASCII email, lower normalizer)"
	m = side("BenchmarkValue/ascii-mixed-case")
	if (nns["BenchmarkValue/unicode"] > 0) { print "  for information, non-ASCII input (NFD, case fold, NFC):"; side("BenchmarkValue/unicode") }
	verdict = (m > 0 && m <= 500) ? "PASS" : "FAIL"; if (verdict == "FAIL") failed = 1
	printf "  %.1f ns/op  target <= 500 ns/op  %s\n\n", m, verdict
	print "auditing BenchmarkVerify"
	m = median(ev, "BenchmarkVerify", nev["BenchmarkVerify"])
	verdict = (m >= 200000) ? "PASS" : "FAIL"; if (verdict == "FAIL") failed = 1
	printf "  %.0f events/s  target >= 200000 events/s  %s\n\n", m, verdict
	print "codec BenchmarkOpen"
	if (!codec_bench) {
		print "  SKIP: codec has no BenchmarkOpen"
	} else {
		found = 0
		for (k = 1; k <= nnames; k++) {
			if (order[k] !~ /^BenchmarkOpen(\/|$)/) continue
			found = 1
			m = side(order[k])
			verdict = (m <= 400) ? "PASS" : "FAIL"
			if (verdict == "FAIL") failed = 1
			printf "  %.1f ns/op  target <= 400 ns/op  %s\n", m, verdict
		}
		if (!found) {
			print "  MISSING: no results for BenchmarkOpen"
			failed = 1
		}
	}
	exit failed
}
' "$raw"
