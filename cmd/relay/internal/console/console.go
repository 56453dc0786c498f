package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed web
var webFS embed.FS

// Config configures a console.
type Config struct {
	Pool *pgxpool.Pool
	// Addr is the listen address (default 127.0.0.1:8090).
	Addr string
	// Token, when set, is required of every request. It must be set when
	// Addr is not a loopback address.
	Token  string
	Logger *slog.Logger
}

// Server is a running console's HTTP side.
type Server struct {
	cfg     Config
	csrfKey []byte
	pages   map[string]*template.Template
}

// ErrNeedsToken is returned by New for a non-loopback address without a
// token.
var ErrNeedsToken = errors.New("console: console_addr is not a loopback address: set console_token_file (the console refuses to serve other hosts unauthenticated)")

// New checks cfg and builds the console.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:8090"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Token == "" && !IsLoopback(cfg.Addr) {
		return nil, ErrNeedsToken
	}
	s := &Server{cfg: cfg, csrfKey: make([]byte, 32)}
	if _, err := rand.Read(s.csrfKey); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s.pages = pages
	return s, nil
}

// IsLoopback reports whether addr (host:port) listens on loopback only.
// An empty host (every interface) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// No write timeout: a replay answers when its rows are published,
	// which may take minutes. Reads and idle connections are bounded.
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute}
	s.cfg.Logger.Info("console listening", "addr", ln.Addr().String(), "auth", s.cfg.Token != "")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("console: %w", err)
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		<-errc
		return nil
	}
}

// Handler is the console's routes behind its security layer.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	assets, _ := fs.Sub(webFS, "web/assets")
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(assets)))
	mux.HandleFunc("GET /login", s.login)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /keys", s.keys)
	mux.HandleFunc("GET /failing", s.failing)
	mux.HandleFunc("GET /dead", s.dead)
	mux.HandleFunc("GET /search", s.search)
	mux.HandleFunc("GET /row/{id}", s.row)
	mux.HandleFunc("GET /audit", s.audit)
	mux.HandleFunc("POST /act", s.act)
	mux.HandleFunc("POST /replay", s.replay)
	return s.secure(mux)
}

// csp allows the console's own style sheet and images, and nothing else:
// no script at all (inline or not), no frames, forms posting only here.
const csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

const cookieName = "relay_console"

// secure sets the headers every response carries, and refuses what the
// console must not serve: any request but the login form and the style
// sheet without the token (when one is set), and a state-changing request
// from another site.
func (s *Server) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin") // no-referrer would make the browser send Origin: null on our own forms
		h.Set("Cache-Control", "no-store")
		if r.Method == http.MethodPost && !s.sameOrigin(r) {
			http.Error(w, "cross-site request refused", http.StatusForbidden)
			return
		}
		open := r.URL.Path == "/login" || strings.HasPrefix(r.URL.Path, "/assets/")
		if s.cfg.Token != "" && !open && !s.authenticated(r) {
			if r.Method == http.MethodGet && r.Header.Get("Authorization") == "" {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sameOrigin refuses a POST whose browser says it comes from elsewhere:
// Sec-Fetch-Site other than same-origin or none, or an Origin that is not
// this host. The CSRF token is checked besides (checkCSRF), for clients
// that send neither header.
func (s *Server) sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return true
}

// session is the cookie value: an HMAC of the token, so the cookie does
// not hold the token itself.
func (s *Server) session() string {
	m := hmac.New(sha256.New, []byte(s.cfg.Token))
	m.Write([]byte("relay console session"))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) authenticated(r *http.Request) bool {
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		return subtle.ConstantTimeCompare([]byte(strings.TrimPrefix(a, "Bearer ")), []byte(s.cfg.Token)) == 1
	}
	c, err := r.Cookie(cookieName)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(s.session())) == 1
}

// csrf is the token a page's forms carry: an HMAC, under a key made at
// start, of the session (empty without a token), so a page of another
// site cannot know it and a restart invalidates it.
func (s *Server) csrf() string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(s.session()))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) checkCSRF(r *http.Request) bool {
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf())) == 1
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		if s.cfg.Token != "" && subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(s.cfg.Token)) == 1 {
			http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.session(), Path: "/", HttpOnly: true,
				SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "login", page{Title: "Sign in", Error: "wrong token"})
		return
	}
	s.render(w, r, "login", page{Title: "Sign in"})
}

// page is what every template gets.
type page struct {
	Title  string
	Nav    string
	CSRF   string
	CanAct bool
	Error  string
	Notice string
	Data   any
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, name string, p page) {
	p.CSRF = s.csrf()
	if name != "login" {
		p.CanAct = s.canAct(r.Context())
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := s.pages[name].ExecuteTemplate(w, "layout", p); err != nil {
		s.cfg.Logger.Error("console: render", "page", name, "err", err)
	}
}

// canAct says whether the console's database role may act: the buttons
// are shown only then. The database enforces it either way.
func (s *Server) canAct(ctx context.Context) bool {
	var ok bool
	err := s.cfg.Pool.QueryRow(ctx, `SELECT has_table_privilege('outbox', 'UPDATE')
	    AND has_table_privilege('outbox', 'INSERT') AND has_any_column_privilege('relay_audit', 'INSERT')`).Scan(&ok)
	return err == nil && ok
}

// fail answers a request that failed: permission denied by the database
// is 403, anything else 500, with the error as text (escaped).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42501" {
		status = http.StatusForbidden
	}
	s.cfg.Logger.Warn("console: request failed", "path", r.URL.Path, "err", err)
	w.WriteHeader(status)
	s.render(w, r, "error", page{Title: "Error", Error: err.Error()})
}
