package phidb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrInsecureConnection is returned when a connection could travel or start
// without verified TLS 1.2+. Its wrapping message says what to change.
var ErrInsecureConnection = errors.New("phidb: insecure database connection refused")

func insecure(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInsecureConnection, fmt.Sprintf(format, args...))
}

// withDefaultSSLMode makes a missing sslmode mean verify-full (pgx, like
// libpq, would take it as prefer, which falls back to plaintext). A string
// that sets sslmode, ssl or a service, or an environment that sets
// PGSSLMODE or PGSERVICE, is left alone: its effective mode is checked after
// parsing.
func withDefaultSSLMode(connString string) string {
	if os.Getenv("PGSSLMODE") != "" || os.Getenv("PGSERVICE") != "" {
		return connString
	}
	isURL := strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://")
	var keys []string
	if isURL {
		u, err := url.Parse(connString)
		if err != nil {
			return connString // pgx reports the parse error
		}
		for k := range u.Query() {
			keys = append(keys, k)
		}
	} else {
		var ok bool
		if keys, ok = keywordKeys(connString); !ok {
			return connString
		}
	}
	for _, k := range keys {
		if k == "sslmode" || k == "ssl" || k == "service" {
			return connString
		}
	}
	switch {
	case !isURL:
		return connString + " sslmode=verify-full"
	case strings.Contains(connString, "?"):
		return connString + "&sslmode=verify-full"
	default:
		return connString + "?sslmode=verify-full"
	}
}

// keywordKeys lists the keys of a keyword/value connection string, following
// libpq's grammar (values unquoted up to a space, or single-quoted, with
// backslash escapes).
func keywordKeys(s string) ([]string, bool) {
	const space = " \t\n\r\v\f"
	var keys []string
	s = strings.TrimLeft(s, space)
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, false
		}
		keys = append(keys, strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], space)
		quoted := len(s) > 0 && s[0] == '\''
		if quoted {
			s = s[1:]
		}
		end := 0
		for ; end < len(s); end++ {
			if quoted && s[end] == '\'' || !quoted && strings.IndexByte(space, s[end]) >= 0 {
				break
			}
			if s[end] == '\\' {
				end++
			}
		}
		if quoted {
			if end >= len(s) {
				return nil, false
			}
			end++
		}
		s = strings.TrimLeft(s[min(end, len(s)):], space)
	}
	return keys, true
}

// secureConnConfig checks a parsed configuration before anything is dialed,
// and installs the per-connection TLS check. It changes cfg (and its TLS
// configs) in place, because pgx keys sslcert/sslkey loaders by the
// *tls.Config pointer.
func secureConnConfig(cfg *pgconn.Config, allowUnverified bool) error {
	for _, h := range append([]*pgconn.FallbackConfig{{Host: cfg.Host}}, cfg.Fallbacks...) {
		if strings.HasPrefix(h.Host, "/") || strings.HasPrefix(h.Host, "@") {
			return insecure("host %q is a unix socket, where sslmode is ignored; connect to a TCP host name with sslmode=verify-full", h.Host)
		}
	}
	if cfg.TLSConfig == nil {
		if len(cfg.Fallbacks) > 0 && cfg.Fallbacks[0].TLSConfig != nil {
			return insecure("sslmode=allow tries plaintext first; use sslmode=verify-full")
		}
		return insecure("sslmode=disable sends data and passwords in plaintext; use sslmode=verify-full with sslrootcert set to your server's CA")
	}
	for _, fb := range cfg.Fallbacks {
		if fb.TLSConfig == nil {
			return insecure("sslmode=prefer (also pgx's default when sslmode is unset, e.g. from PGSSLMODE) falls back to plaintext; use sslmode=verify-full")
		}
	}
	tlsConfigs := []*tls.Config{cfg.TLSConfig}
	for _, fb := range cfg.Fallbacks {
		tlsConfigs = append(tlsConfigs, fb.TLSConfig)
	}
	for _, tc := range tlsConfigs {
		if tc.InsecureSkipVerify && tc.VerifyPeerCertificate == nil && !allowUnverified {
			return insecure("the server certificate is not verified (sslmode=require without sslrootcert); use sslmode=verify-full with sslrootcert, or set Config.InsecureAllowUnverifiedTLS if you accept a man-in-the-middle")
		}
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12 // in place: pgx keys sslcert loaders by this pointer
		}
	}

	userHook := cfg.AfterNetConnect
	cfg.AfterNetConnect = func(ctx context.Context, c *pgconn.Config, conn net.Conn) (net.Conn, error) {
		if err := checkTLS(ctx, conn); err != nil {
			return conn, err // pgx closes the conn we return; never return nil
		}
		if userHook != nil {
			return userHook(ctx, c, conn)
		}
		return conn, nil
	}
	return nil
}

// checkTLS insists that conn is a completed TLS 1.2+ session. It runs after
// dial and before the startup message, so no password or query is sent on a
// connection that fails it.
func checkTLS(ctx context.Context, conn net.Conn) error {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return insecure("the connection to %s is not TLS", conn.RemoteAddr())
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%w: TLS handshake with %s failed: %v", ErrInsecureConnection, conn.RemoteAddr(), err)
	}
	if v := tc.ConnectionState().Version; v < tls.VersionTLS12 {
		return insecure("the connection to %s negotiated %s; TLS 1.2 or newer is required", conn.RemoteAddr(), tls.VersionName(v))
	}
	return nil
}
