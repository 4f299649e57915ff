package blindindex

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// Normalizer turns a field's text into the bytes that are indexed. It must be
// deterministic and safe for concurrent use, and should be idempotent: the
// value written and the value looked up go through the same normalizer, and
// any two inputs it maps to the same output match each other.
type Normalizer func(string) string

var (
	// ErrUnknownNormalizer reports a normalizer name that is neither built in
	// nor registered with [Register].
	ErrUnknownNormalizer = errors.New("blindindex: unknown normalizer")
	// ErrBadSpec reports an invalid index declaration: a bad [Spec] or a
	// string [ParseSpec] cannot parse, or a malformed normalizer chain.
	ErrBadSpec = errors.New("blindindex: bad index spec")
)

// Built-in normalizer names. Besides these, "firstN" and "lastN" for any
// decimal N >= 1 without leading zeros (e.g. "first3", "last4") are built in.
const (
	// normLower is NFD, Unicode full case folding, then NFC; see [lower].
	normLower = "lower"
	// normTrim removes leading and trailing white space (strings.TrimSpace).
	normTrim = "trim"
	// normDigits keeps only decimal digits; see [digits].
	normDigits = "digits"
	// normNFC is Unicode canonical composition (NFC).
	normNFC = "nfc"
)

var builtins = map[string]Normalizer{
	normLower:  lower,
	normTrim:   strings.TrimSpace,
	normDigits: digits,
	normNFC:    norm.NFC.String,
}

var registry struct {
	mu sync.RWMutex
	m  map[string]Normalizer
}

// Register adds a user normalizer under name, for use in chains and index
// specs. It fails if n is nil, or if name is empty, names a built-in (including
// any "firstN"/"lastN" form), is already registered, or contains ':', '+', ','
// or '=' (the separators of phi tags and specs) or white space or control
// characters. Registrations cannot be replaced or removed, so an index built
// from a name keeps meaning the same thing; register at init time.
func Register(name string, n Normalizer) error {
	if n == nil {
		return fmt.Errorf("blindindex: register normalizer %q: nil function", name)
	}
	if err := checkNormalizerName(name); err != nil {
		return fmt.Errorf("blindindex: register normalizer: %w", err)
	}
	if _, ok := builtin(name); ok || looksBuiltin(name) {
		return fmt.Errorf("blindindex: register normalizer %q: name is built in", name)
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if _, dup := registry.m[name]; dup {
		return fmt.Errorf("blindindex: register normalizer %q: already registered", name)
	}
	if registry.m == nil {
		registry.m = make(map[string]Normalizer)
	}
	registry.m[name] = n
	return nil
}

func checkNormalizerName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if strings.ContainsRune(":+,=", r) || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("name %q contains %q", name, r)
		}
	}
	return nil
}

// LookupNormalizer returns the built-in or registered normalizer called name.
// An unknown name fails with an error wrapping [ErrUnknownNormalizer] that
// names it.
func LookupNormalizer(name string) (Normalizer, error) {
	if n, ok := builtin(name); ok {
		return n, nil
	}
	registry.mu.RLock()
	n, ok := registry.m[name]
	registry.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownNormalizer, name)
	}
	return n, nil
}

// Chain returns the normalizer for spec: normalizer names joined by '+',
// applied left to right ("trim+lower", "digits+last4"). The empty spec is the
// identity. Names are resolved now, once. An unknown name fails with an error
// wrapping [ErrUnknownNormalizer]; an empty name (as in "lower++trim" or
// "lower+") with one wrapping [ErrBadSpec].
func Chain(spec string) (Normalizer, error) {
	if spec == "" {
		return identity, nil
	}
	names := strings.Split(spec, "+")
	fs := make([]Normalizer, 0, len(names))
	for _, name := range names {
		if name == "" {
			return nil, fmt.Errorf("%w: normalizer chain %q has an empty name", ErrBadSpec, spec)
		}
		n, err := LookupNormalizer(name)
		if err != nil {
			return nil, err
		}
		fs = append(fs, n)
	}
	if len(fs) == 1 {
		return fs[0], nil
	}
	return func(s string) string {
		for _, f := range fs {
			s = f(s)
		}
		return s
	}, nil
}

func identity(s string) string { return s }

// builtin resolves the fixed built-ins and the firstN/lastN family.
func builtin(name string) (Normalizer, bool) {
	if n, ok := builtins[name]; ok {
		return n, true
	}
	if rest, ok := strings.CutPrefix(name, "first"); ok {
		if n, ok := parseCount(rest); ok {
			return func(s string) string { return firstRunes(s, n) }, true
		}
	}
	if rest, ok := strings.CutPrefix(name, "last"); ok {
		if n, ok := parseCount(rest); ok {
			return func(s string) string { return lastRunes(s, n) }, true
		}
	}
	return nil, false
}

// looksBuiltin reports names in the firstN/lastN namespace that are not valid
// built-ins ("last04", "first0"), which Register refuses as confusing.
func looksBuiltin(name string) bool {
	for _, p := range []string{"first", "last"} {
		if rest, ok := strings.CutPrefix(name, p); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}

// parseCount parses N of firstN/lastN: decimal, >= 1, no sign, no leading
// zero, at most 9 digits.
func parseCount(s string) (int, bool) {
	if s == "" || len(s) > 9 || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 1
}

// firstRunes returns the first n runes of s (all of s if it has fewer). Each
// byte of invalid UTF-8 counts as one rune.
func firstRunes(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

// lastRunes returns the last n runes of s (all of s if it has fewer). Each
// byte of invalid UTF-8 counts as one rune.
func lastRunes(s string, n int) string {
	i := len(s)
	for ; i > 0 && n > 0; n-- {
		_, size := utf8.DecodeLastRuneInString(s[:i])
		i -= size
	}
	return s[i:]
}

// digits keeps only the decimal digits of s (unicode.IsDigit, i.e. category
// Nd), mapping every one to its ASCII form, so "123-45-6789" gives
// "123456789" and the full-width "１２３" or Arabic-Indic "١٢٣" give "123".
func digits(s string) string {
	ascii := true
	n := 0
	for _, r := range s {
		if r >= '0' && r <= '9' {
			n++
		} else if r >= utf8.RuneSelf && unicode.IsDigit(r) {
			n++
			ascii = false
		}
	}
	if n == len(s) && ascii {
		return s // only ASCII digits already
	}
	b := make([]byte, 0, n)
	for _, r := range s {
		if r >= '0' && r <= '9' {
			b = append(b, byte(r))
		} else if r >= utf8.RuneSelf && unicode.IsDigit(r) {
			b = append(b, '0'+digitValue(r))
		}
	}
	return string(b)
}

// digitValue returns the value of a decimal digit r (unicode.IsDigit(r)).
// Unicode encodes every set of decimal digits (Numeric_Type=Decimal, which is
// exactly category Nd) as a contiguous run from 0 to 9, so the runs of
// unicode.Nd are made of whole sets of ten, each starting at its zero.
func digitValue(r rune) byte {
	t := unicode.Nd
	for _, rg := range t.R16 {
		if lo, hi := rune(rg.Lo), rune(rg.Hi); r >= lo && r <= hi {
			return byte((r - lo) % 10)
		}
	}
	for _, rg := range t.R32 {
		if lo, hi := rune(rg.Lo), rune(rg.Hi); r >= lo && r <= hi {
			return byte((r - lo) % 10)
		}
	}
	return 0 // not reached for digits
}

// lower is the "lower" normalizer: NFC(fold(NFD(s))), where fold is Unicode
// full case folding (golang.org/x/text/cases.Fold, so "Straße" and "STRASSE"
// match). NFD first makes canonically equivalent inputs ("Ä" and "A\u0308")
// fold identically; without it cases.Fold treats some of them differently
// (e.g. "À\u0345" and "A\u0300\u0345"). This is the Unicode canonical
// caseless match (The Unicode Standard, 3.13, D145) put back into NFC.
//
// cases.Fold (x/text v0.41.0) maps Cherokee capitals to small letters and
// small letters to capitals, so neither form would match the other;
// CaseFolding.txt folds both to the capitals, which cherokeeFold restores.
//
// Non-ASCII input is transformed in pooled buffers, which are wiped after
// use; only the result is allocated.
//
// Pure ASCII input takes a fast path that gives the same result (A-Z to a-z).
func lower(s string) string {
	upper := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return lowerUnicode(s)
		}
		upper = upper || ('A' <= c && c <= 'Z')
	}
	if !upper {
		return s
	}
	return strings.ToLower(s) // ASCII: folding is exactly A-Z -> a-z
}

// lowerState is the scratch state of lowerUnicode: a full-case-folding
// Caser (stateful, so not shared between goroutines) and two buffers.
type lowerState struct {
	fold cases.Caser
	it   norm.Iter // reused: Form.Append allocates its ~1 KB state each call
	a, b []byte
}

var lowerPool = sync.Pool{New: func() any { return &lowerState{fold: cases.Fold()} }}

// maxMarkRun is the longest run of combining marks lowerUnicode handles with
// norm.Iter. Each rune contributes at most 3 non-starters after NFD and
// folding (TestLowerNonStarterBound), so a run of 7 marks after a base gives
// at most 24, below the 30 after which the Stream-Safe Text Format inserts
// U+034F; norm.Iter places those differently from Form.String, so longer
// runs take lowerSlow, the plain definition.
const maxMarkRun = 7

func lowerUnicode(s string) string {
	run := 0
	for _, r := range s {
		if r < utf8.RuneSelf || !unicode.Is(unicode.Mark, r) {
			run = 0
		} else if run++; run > maxMarkRun {
			return lowerSlow(s)
		}
	}
	st := lowerPool.Get().(*lowerState)
	st.it.InitString(norm.NFD, s)
	st.a = appendIter(st.a[:0], &st.it)
	var ok bool
	st.b, ok = transformAppend(st.fold, st.b[:0], st.a)
	if !ok { // not expected: Caser only reports short buffers
		st.b = append(st.b[:0], st.fold.String(string(st.a))...)
	}
	cherokeeFold(st.b)
	st.it.Init(norm.NFC, st.b)
	st.a = appendIter(st.a[:0], &st.it)
	out := string(st.a)
	// The buffers held PHI: wipe them before reuse.
	clear(st.a)
	clear(st.b)
	if cap(st.a) <= maxPooledBuf && cap(st.b) <= maxPooledBuf {
		lowerPool.Put(st)
	}
	return out
}

// lowerSlow is lowerUnicode without buffer reuse, for pathological input.
func lowerSlow(s string) string {
	st := lowerPool.Get().(*lowerState)
	s = st.fold.String(norm.NFD.String(s))
	lowerPool.Put(st)
	if strings.ContainsFunc(s, isCherokeeSmall) {
		b := []byte(s)
		cherokeeFold(b)
		s = string(b)
	}
	return norm.NFC.String(s)
}

func isCherokeeSmall(r rune) bool {
	return (r >= cherokeeSmallLo && r <= cherokeeSmallHi) || (r >= cherokeeSmall2Lo && r <= cherokeeSmall2Hi)
}

// appendIter appends the rest of its output to dst.
func appendIter(dst []byte, it *norm.Iter) []byte {
	for !it.Done() {
		dst = append(dst, it.Next()...)
	}
	return dst
}

// transformAppend appends t applied to all of src to dst, growing dst as
// needed. It reports false if t fails other than for lack of room.
func transformAppend(t transform.Transformer, dst, src []byte) ([]byte, bool) {
	t.Reset()
	for {
		if need := len(src) + utf8.UTFMax; cap(dst)-len(dst) < need {
			dst = slices.Grow(dst, need)
		}
		nDst, nSrc, err := t.Transform(dst[len(dst):cap(dst)], src, true)
		dst = dst[:len(dst)+nDst]
		src = src[nSrc:]
		switch {
		case err == nil:
			return dst, true
		case err == transform.ErrShortDst:
			if nDst == 0 && nSrc == 0 {
				dst = slices.Grow(dst, 2*(cap(dst)-len(dst))+utf8.UTFMax)
			}
		default:
			return dst, false
		}
	}
}

// Cherokee small letters and the capitals CaseFolding.txt folds them to.
const (
	cherokeeSmallLo, cherokeeSmallHi   = 0xAB70, 0xABBF // -> U+13A0..U+13EF
	cherokeeSmall2Lo, cherokeeSmall2Hi = 0x13F8, 0x13FD // -> U+13F0..U+13F5
)

// cherokeeFold rewrites, in place, Cherokee small letters in UTF-8 b to the
// capitals CaseFolding.txt folds them to. Both are 3-byte sequences.
func cherokeeFold(b []byte) {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r >= cherokeeSmallLo && r <= cherokeeSmallHi:
			utf8.EncodeRune(b[i:], r-cherokeeSmallLo+0x13A0)
		case r >= cherokeeSmall2Lo && r <= cherokeeSmall2Hi:
			utf8.EncodeRune(b[i:], r-cherokeeSmall2Lo+0x13F0)
		}
		i += n
	}
}
