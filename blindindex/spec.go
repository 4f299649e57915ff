package blindindex

import (
	"fmt"
	"strings"
)

// DefaultBits is the width of an index whose spec does not set bits.
const DefaultBits = 32

// maxNameLen is PostgreSQL's identifier limit (NAMEDATALEN-1 bytes); longer
// names are silently truncated by the server, so they are refused here.
const maxNameLen = 63

// Spec is one declared index, parsed from a struct tag option.
type Spec struct {
	// Name is the index name and the bigint column that stores it, e.g.
	// "email_bidx". It is bound into the index key, so renaming an index
	// changes every value: re-index after a rename.
	Name string
	// Normalizers is the normalizer chain spec ("trim+lower"), applied to
	// each part; empty means the identity.
	Normalizers string
	// Bits is the index width, 1..64; [ParseSpec] sets DefaultBits (32) when
	// the spec has no bits option, and [New] treats 0 as DefaultBits.
	Bits int
	// Fields are the Go field names the index covers, in the order their
	// values are passed to [Index.Value]: one for a simple index, several for
	// a compound one.
	Fields []string
}

// ParseSpec parses an index declaration, the text after "index=" in a phi
// tag: the index name, then options separated by ':':
//
//	email_bidx                     32 bits, no normalization
//	email_bidx:lower               a normalizer chain (see Chain)
//	ssn_last4_bidx:digits+last4:bits=16
//	email_bidx:bits=24
//
// At most one chain and one bits option may appear, in any order. Fields is
// left empty for the caller to fill. Errors wrap ErrBadSpec (and
// ErrUnknownNormalizer for an unknown normalizer): empty name, a name that is
// not a valid SQL identifier [a-z_][a-z0-9_]* of at most 63 bytes, bits not a
// decimal number in 1..64, an empty or unknown option, a repeated option.
func ParseSpec(s string) (Spec, error) {
	segs := strings.Split(s, ":")
	sp := Spec{Name: segs[0]}
	if err := checkIndexName(sp.Name); err != nil {
		return Spec{}, fmt.Errorf("%w %q: %v", ErrBadSpec, s, err)
	}
	var haveBits, haveChain bool
	for _, seg := range segs[1:] {
		key, val, isOpt := strings.Cut(seg, "=")
		switch {
		case seg == "":
			return Spec{}, fmt.Errorf("%w %q: empty option", ErrBadSpec, s)
		case isOpt && key == "bits":
			if haveBits {
				return Spec{}, fmt.Errorf("%w %q: bits given twice", ErrBadSpec, s)
			}
			n, ok := parseBits(val)
			if !ok {
				return Spec{}, fmt.Errorf("%w %q: bits=%q: want a decimal number in 1..64", ErrBadSpec, s, val)
			}
			sp.Bits, haveBits = n, true
		case isOpt:
			return Spec{}, fmt.Errorf("%w %q: unknown option %q", ErrBadSpec, s, key)
		default:
			if haveChain {
				return Spec{}, fmt.Errorf("%w %q: more than one normalizer chain (join normalizers with '+')", ErrBadSpec, s)
			}
			if _, err := Chain(seg); err != nil {
				return Spec{}, fmt.Errorf("%w %q: %w", ErrBadSpec, s, err)
			}
			sp.Normalizers, haveChain = seg, true
		}
	}
	if !haveBits {
		sp.Bits = DefaultBits
	}
	return sp, nil
}

func parseBits(s string) (int, bool) {
	if s == "" || len(s) > 2 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, n >= 1 && n <= 64
}

// checkIndexName accepts [a-z_][a-z0-9_]* of at most maxNameLen bytes.
func checkIndexName(name string) error {
	if name == "" {
		return fmt.Errorf("empty index name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("index name longer than %d bytes", maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' || ('a' <= c && c <= 'z') || (i > 0 && '0' <= c && c <= '9') {
			continue
		}
		return fmt.Errorf("index name %q is not a lower-case SQL identifier [a-z_][a-z0-9_]*", name)
	}
	return nil
}

// validate checks a Spec built by hand or by ParseSpec plus Fields, and
// returns it with Bits defaulted.
func (sp Spec) validate() (Spec, error) {
	if err := checkIndexName(sp.Name); err != nil {
		return Spec{}, fmt.Errorf("%w: %v", ErrBadSpec, err)
	}
	if sp.Bits == 0 {
		sp.Bits = DefaultBits
	}
	if sp.Bits < 1 || sp.Bits > 64 {
		return Spec{}, fmt.Errorf("%w: index %s: bits %d out of 1..64", ErrBadSpec, sp.Name, sp.Bits)
	}
	if len(sp.Fields) == 0 {
		return Spec{}, fmt.Errorf("%w: index %s covers no fields", ErrBadSpec, sp.Name)
	}
	seen := make(map[string]bool, len(sp.Fields))
	for _, f := range sp.Fields {
		if f == "" {
			return Spec{}, fmt.Errorf("%w: index %s: empty field name", ErrBadSpec, sp.Name)
		}
		if seen[f] {
			return Spec{}, fmt.Errorf("%w: index %s: field %s listed twice", ErrBadSpec, sp.Name, f)
		}
		seen[f] = true
	}
	sp.Fields = append([]string(nil), sp.Fields...)
	return sp, nil
}
