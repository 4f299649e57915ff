package blindindex

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// codePointStep is the stride of the loops over all code points: 1, or 7
// under -race, which is about ten times slower.
var codePointStep rune = 1

func init() {
	if raceEnabled {
		codePointStep = 7
	}
}

func chain(t *testing.T, spec string) Normalizer {
	t.Helper()
	n, err := Chain(spec)
	require.NoError(t, err)
	return n
}

func TestBuiltinNormalizers(t *testing.T) {
	tests := []struct {
		spec, in, want string
	}{
		{"", " Alice ", " Alice "},
		{"lower", "ALICE@Example.COM", "alice@example.com"},
		{"lower", "alice", "alice"},
		{"lower", "ÄLICE", "älice"},
		{"lower", "A\u0308LICE", "älice"},
		{"lower", "a\u0308lice", "älice"},
		{"lower", "Straße", "strasse"},
		{"lower", "STRASSE", "strasse"},
		{"lower", "ΣΊΣΥΦΟΣ", "σίσυφοσ"},
		{"lower", "σίσυφος", "σίσυφοσ"},
		{"lower", "\u212A", "k"},                                          // Kelvin sign
		{"lower", "ǰ", "ǰ"},                                               // folds to j + U+030C, recomposed
		{"lower", "\u13A0\uAB70\u13F8\u13F0", "\u13A0\u13A0\u13F0\u13F0"}, // Cherokee folds to capitals
		{"nfc", "A\u0308", "Ä"},
		{"nfc", "Ä", "Ä"},
		{"trim", " \t alice \n", "alice"},
		{"trim", "\u00a0alice\u2003", "alice"},
		{"digits", "123-45-6789", "123456789"},
		{"digits", "(555) 010-9999 ext. 7", "55501099997"},
		{"digits", "１２３", "123"},               // full-width
		{"digits", "٠١٢٣٤٥٦٧٨٩", "0123456789"}, // Arabic-Indic
		{"digits", "𝟘𝟙𝟚 𝟬𝟵", "01209"},          // mathematical double-struck and sans-serif bold
		{"digits", "½ ² Ⅻ", ""},                // numbers but not decimal digits
		{"digits", "0042", "0042"},
		{"digits", "", ""},
		{"last4", "123-45-6789", "6789"},
		{"last4", "éèêë€", "èêë€"},
		{"last4", "abc", "abc"},
		{"last1", "abc", "c"},
		{"first3", "Ångström", "Ång"},
		{"first3", "ab", "ab"},
		{"first1", "", ""},
		{"first100", "short", "short"},
		{"digits+last4", "123-45-6789", "6789"},
		{"last4+digits", "12-3456-78", "678"},
		{"trim+lower", "  Alice@Example.com ", "alice@example.com"},
		{"trim+lower+first3", "  ÄLICE ", "äli"},
		{"lower+nfc", "A\u0308", "ä"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s(%q)", tt.spec, tt.in), func(t *testing.T) {
			require.Equal(t, tt.want, chain(t, tt.spec)(tt.in))
		})
	}
}

func TestLowerIndexValues(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "name_bidx:lower", "Name")
	v := value(t, ix, "ÄLICE")
	require.Equal(t, v, value(t, ix, "älice"))
	require.Equal(t, v, value(t, ix, "A\u0308LICE"))
	require.Equal(t, v, value(t, ix, "a\u0308lice"))
	require.NotEqual(t, v, value(t, ix, "ALICE"))
}

// TestLowerProperties checks, over the BMP and the SMP, that "lower" is
// idempotent, ignores case (runes equivalent under Unicode simple case
// folding, unicode.SimpleFold's orbits, give the same result) and respects
// canonical equivalence.
func TestLowerProperties(t *testing.T) {
	for r := rune(0); r < 0x20000; r += codePointStep {
		if !utf8.ValidRune(r) {
			continue
		}
		s := string(r)
		l := lower(s)
		require.Equal(t, l, lower(l), "not idempotent for %U", r)
		require.True(t, norm.NFC.IsNormalString(l), "not NFC for %U", r)
		require.Equal(t, l, lower(norm.NFD.String(s)), "NFD form of %U", r)
		for o := unicode.SimpleFold(r); o != r; o = unicode.SimpleFold(o) {
			require.Equal(t, l, lower(string(o)), "%U and %U", r, o)
		}
	}
	// Canonically equivalent sequences that cases.Fold alone treats apart.
	for _, s := range []string{"À\u0345", "ᾼ\u0301", "Ǟ\u0345", "Ω\u0313\u0345"} {
		require.Equal(t, lower(s), lower(norm.NFD.String(s)), "%+q", s)
		require.Equal(t, lower(s), lower(norm.NFC.String(s)), "%+q", s)
	}
}

func TestLowerASCIIFastPath(t *testing.T) {
	f := cases.Fold()
	var all strings.Builder
	for c := range 128 {
		s := string(rune(c))
		require.Equal(t, norm.NFC.String(f.String(s)), lower(s), "byte %d", c)
		all.WriteString(s)
	}
	require.Equal(t, f.String(all.String()), lower(all.String()))
}

func TestDigitRanges(t *testing.T) {
	// digitValue relies on every Nd range being whole runs of ten.
	for _, rg := range unicode.Nd.R16 {
		require.Equal(t, uint16(1), rg.Stride)
		require.Zero(t, (rg.Hi-rg.Lo+1)%10, "range %U..%U", rg.Lo, rg.Hi)
	}
	for _, rg := range unicode.Nd.R32 {
		require.Equal(t, uint32(1), rg.Stride)
		require.Zero(t, (rg.Hi-rg.Lo+1)%10, "range %U..%U", rg.Lo, rg.Hi)
	}
	for r, want := range map[rune]byte{'7': 7, 0x0660: 0, 0x0669: 9, 0xFF15: 5, 0x1D7CE: 0, 0x1D7D8: 0, 0x1D7D9: 1, 0x1D7FF: 9} {
		require.Equal(t, want, digitValue(r), "%U", r)
	}
}

// registerRuns makes TestRegister's names unique across -count runs, since
// registrations are global and permanent.
var registerRuns atomic.Int64

func TestRegister(t *testing.T) {
	run := fmt.Sprint(registerRuns.Add(1))
	strip, reverse := "test_strip_plus"+run, "test.reverse"+run
	require.NoError(t, Register(strip, func(s string) string { return strings.ReplaceAll(s, "+", "") }))
	require.NoError(t, Register(reverse, func(s string) string {
		r := []rune(s)
		for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
			r[i], r[j] = r[j], r[i]
		}
		return string(r)
	}))
	n, err := LookupNormalizer(reverse)
	require.NoError(t, err)
	require.Equal(t, "cba", n("abc"))
	require.Equal(t, "cba", chain(t, reverse)("abc"))
	require.Equal(t, "4321", chain(t, "digits+"+reverse)("+1 (23) 4"))
	require.Equal(t, "1234", chain(t, strip+"+trim")(" +1234"))

	sp, err := ParseSpec("phone_bidx:" + strip + "+digits+last4:bits=12")
	require.NoError(t, err)
	require.Equal(t, strip+"+digits+last4", sp.Normalizers)
	sp.Fields = []string{"Phone"}
	ix, err := New(newKeyring(t), "patients", sp)
	require.NoError(t, err)
	require.Equal(t, value(t, ix, "+1 555 010 9999"), value(t, ix, "9999"))

	bad := []struct{ name, want string }{
		{"", "empty name"},
		{"lower", "built in"},
		{"trim", "built in"},
		{"digits", "built in"},
		{"nfc", "built in"},
		{"last4", "built in"},
		{"first12", "built in"},
		{"last04", "built in"},
		{"first0", "built in"},
		{reverse, "already registered"},
		{"a:b", "contains"},
		{"a+b", "contains"},
		{"a,b", "contains"},
		{"a=b", "contains"},
		{"a b", "contains"},
		{"a\nb", "contains"},
		{"\xff", "UTF-8"},
	}
	for _, tt := range bad {
		err := Register(tt.name, strings.ToUpper)
		require.ErrorContains(t, err, tt.want, "%q", tt.name)
	}
	require.Error(t, Register("test_nil"+run, nil))
	_, err = LookupNormalizer("test_nil" + run)
	require.ErrorIs(t, err, ErrUnknownNormalizer)

	// Names that only look like built-ins are fine.
	require.NoError(t, Register("lastname"+run, strings.TrimSpace))
	require.NoError(t, Register("firstx4"+run, strings.TrimSpace))
}

func TestUnknownNormalizer(t *testing.T) {
	for _, spec := range []string{"nope", "lower+nope", "Lower", "last0", "last-1", "last04", "first", "last", "lower "} {
		_, err := Chain(spec)
		require.ErrorIs(t, err, ErrUnknownNormalizer, spec)
		require.NotErrorIs(t, err, ErrBadSpec, spec)
	}
	_, err := LookupNormalizer("nope")
	require.ErrorIs(t, err, ErrUnknownNormalizer)
	require.ErrorContains(t, err, `"nope"`)

	for _, spec := range []string{"+", "lower+", "+lower", "lower++trim"} {
		_, err := Chain(spec)
		require.ErrorIs(t, err, ErrBadSpec, spec)
	}
}

// refLower is lower written plainly: NFC(Cherokee fix(fold(NFD(s)))).
func refLower(s string) string {
	s = cases.Fold().String(norm.NFD.String(s))
	if !strings.ContainsFunc(s, isCherokeeSmall) {
		return norm.NFC.String(s)
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 0xAB70 && r <= 0xABBF:
			return r - 0xAB70 + 0x13A0
		case r >= 0x13F8 && r <= 0x13FD:
			return r - 0x13F8 + 0x13F0
		}
		return r
	}, s)
	return norm.NFC.String(s)
}

// requireSame compares long strings without printing them whole.
func requireSame(t *testing.T, want, got string, msg string) {
	t.Helper()
	if want == got {
		return
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	lo := max(0, i-12)
	t.Fatalf("%s: lengths %d, %d; first difference at byte %d: want %+q, got %+q", msg, len(want), len(got), i,
		want[lo:min(len(want), i+12)], got[lo:min(len(got), i+12)])
}

func TestLowerMatchesReference(t *testing.T) {
	var sb strings.Builder
	for r := rune(0x80); r <= unicode.MaxRune; r += codePointStep {
		if !utf8.ValidRune(r) {
			continue
		}
		s := string(r)
		requireSame(t, refLower(s), lower(s), fmt.Sprintf("%U", r))
		if r < 0x3000 || (r >= 0xAB70 && r < 0xAC00) {
			sb.WriteRune(r)
		}
	}
	marks := []string{"\u0300", "\u0301", "\u0302", "\u0303", "\u0304", "\u0305", "\u0306", "\u0307", "\u0308", "\u0309", "\u0345", "\u0344"}
	for _, s := range []string{
		sb.String(),                        // ~35 KB, beyond the pooled buffer size, long mark runs
		strings.Repeat("ß", 3000),          // grows while folding
		strings.Repeat("ΐ", 500),           // one rune to three
		"Ünïcödé \xff\xfe invalid UTF-8 Ä", // invalid bytes pass through
		"José Müller-Łukasiewicz",
		"\u13A0\uAB70\u13F8\u13F0",
		"ᾯ" + strings.Join(marks[:7], ""),  // the longest run of marks for norm.Iter
		"ᾯ" + strings.Join(marks[:8], ""),  // one more: lowerSlow
		"Ǖ" + strings.Repeat("\u0344", 20), // each mark decomposes to two
		"Ǖ" + strings.Repeat(strings.Join(marks, ""), 10),
	} {
		requireSame(t, refLower(s), lower(s), fmt.Sprintf("%.30q", s))
	}
}

// TestLowerNonStarterBound checks the premise of maxMarkRun: after NFD and
// case folding every rune gives at most 3 non-starters (runes of non-zero
// canonical combining class), and a rune that is not a combining mark gives
// no leading non-starter.
func TestLowerNonStarterBound(t *testing.T) {
	f := cases.Fold()
	for r := rune(0x80); r <= unicode.MaxRune; r += codePointStep {
		if !utf8.ValidRune(r) {
			continue
		}
		out := f.String(norm.NFD.String(string(r)))
		n, leading := 0, true
		for _, o := range out {
			if norm.NFD.PropertiesString(string(o)).CCC() != 0 {
				n++
				if leading && !unicode.Is(unicode.Mark, r) {
					t.Fatalf("%U is not a mark but its folded NFD %+q starts with a non-starter", r, out)
				}
			} else {
				leading = false
			}
		}
		require.LessOrEqual(t, n, 3, "%U gives %d non-starters: %+q", r, n, out)
	}
}
