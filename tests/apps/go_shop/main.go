// go_shop: the Go test service of loupe's end-to-end tests (tests/tests/go_services.rs).
//
//	go_shop shop --port 0 --dsn postgres://postgres@127.0.0.1:PORT/shop?sslmode=disable --downstream http://127.0.0.1:Q
//	go_shop downstream --port 0
//
// Both print exactly `listening on 127.0.0.1:<port>` on stdout once they accept, and nothing
// else there (the harness closes the pipe after that line: anything else goes to stderr).
//
// The shop is what a production Go service looks like to loupe: net/http's server (a goroutine
// per connection, goroutines moving between OS threads), a pgxpool.Pool in its default
// QueryExecModeCacheStatement (each statement prepared once per connection, then only
// Bind/Execute on the wire) and one shared keep-alive http.Client to the downstream. Every route
// carries a unique id in its path, and every outbound HTTP call carries the same id in its path,
// so a test can check each span against the request that made it.
//
// Shop routes:
//
//	GET /health          200 ok, no queries
//	GET /warm            holds every pool connection at once and runs both statements on each:
//	                     afterwards every connection has them prepared (a test calls it before
//	                     attaching loupe)
//	GET /item/<id>       SELECT id, total FROM orders WHERE id = $1 (id % 4 + 1), 200
//	GET /n_plus_one/<id> 6 x SELECT id, total FROM orders WHERE user_id = $1, one after another,
//	                     with different values, 200
//	GET /call/<id>       GET downstream /sleep/<id>?ms=30, 200
//	GET /mixed/<id>      one query, then GET downstream /sleep/<id>?ms=20, 200
//	GET /fanout/<id>     GET downstream /sleep/<id>-a?ms=30 and /sleep/<id>-b?ms=30 from two
//	                     goroutines while the handler runs one query; waits for all three, 200
//	GET /sequential/<id> GET downstream /sleep/<id>?ms=30, then SELECT pg_sleep(0.03): two peers
//	                     one after another, each half of the request, 200
//
// Downstream: GET /sleep/<anything>?ms=N sleeps N ms, 200 with a small body.
package main

import (
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	itemQuery   = "SELECT id, total FROM orders WHERE id = $1"
	byUserQuery = "SELECT id, total FROM orders WHERE user_id = $1"
	maxConns    = 8
	nPlusOne    = 6
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	port := fs.Int("port", 0, "port to listen on 127.0.0.1 (0: any free port)")
	dsn := fs.String("dsn", "", "shop: PostgreSQL URL")
	downstream := fs.String("downstream", "", "shop: downstream base URL, http://127.0.0.1:Q")
	if err := fs.Parse(os.Args[2:]); err != nil {
		usage()
	}
	var handler http.Handler
	switch mode {
	case "shop":
		if *dsn == "" || *downstream == "" {
			log.Fatal("go_shop shop: --dsn and --downstream are required")
		}
		handler = newShop(*dsn, *downstream)
	case "downstream":
		handler = newDownstream()
	default:
		usage()
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatalf("go_shop %s: listen: %v", mode, err)
	}
	// os.Stdout is unbuffered: the line is written (flushed) when Printf returns.
	fmt.Printf("listening on %s\n", ln.Addr())
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.Serve(ln))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go_shop shop --port P --dsn URL --downstream URL | go_shop downstream --port P")
	os.Exit(2)
}

type shop struct {
	pool       *pgxpool.Pool
	client     *http.Client
	downstream string
}

func newShop(dsn, downstream string) http.Handler {
	config, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		log.Fatalf("go_shop shop: bad --dsn: %v", err)
	}
	config.MaxConns = maxConns
	// pgxpool pings a connection that sat idle for over a second before handing it out: an
	// extra `-- ping` query on the wire that no route made. The tests count queries exactly.
	config.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, config)
	if err != nil {
		log.Fatalf("go_shop shop: pool: %v", err)
	}
	if err := pool.Ping(ctx); err != nil {
		log.Fatalf("go_shop shop: database: %v", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// Keep-alive for every concurrent request (the default keeps only 2 idle per host).
	transport.MaxIdleConns = 128
	transport.MaxIdleConnsPerHost = 128
	s := &shop{
		pool:       pool,
		client:     &http.Client{Transport: transport, Timeout: 10 * time.Second},
		downstream: downstream,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /warm", s.warm)
	mux.HandleFunc("GET /item/{id}", s.item)
	mux.HandleFunc("GET /n_plus_one/{id}", s.nPlusOne)
	mux.HandleFunc("GET /call/{id}", s.call)
	mux.HandleFunc("GET /mixed/{id}", s.mixed)
	mux.HandleFunc("GET /fanout/{id}", s.fanout)
	mux.HandleFunc("GET /sequential/{id}", s.sequential)
	return mux
}

// idParam: the id itself when it is a number, else a stable hash of it; then % 4 + 1.
func idParam(id string) int64 {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n < 0 {
		h := fnv.New32a()
		h.Write([]byte(id))
		n = int64(h.Sum32())
	}
	return n%4 + 1
}

// query runs one statement through the pool and reads every row; returns the row count.
func (s *shop) query(ctx context.Context, sql string, param int64) (int, error) {
	rows, err := s.pool.Query(ctx, sql, param)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	count := 0
	for rows.Next() {
		var id int64
		var total float64
		if err := rows.Scan(&id, &total); err != nil {
			return count, err
		}
		count++
	}
	return count, rows.Err()
}

// get calls the downstream and reads the whole body, so the connection goes back to the pool.
func (s *shop) get(ctx context.Context, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.downstream+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return nil
}

func fail(w http.ResponseWriter, status int, what string, err error) {
	log.Printf("go_shop: %s: %v", what, err)
	http.Error(w, fmt.Sprintf("%s: %v", what, err), status)
}

func (s *shop) warm(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var conns []*pgxpool.Conn
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range maxConns {
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			fail(w, http.StatusInternalServerError, "acquire", err)
			return
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		for _, sql := range []string{itemQuery, byUserQuery} {
			rows, err := c.Query(ctx, sql, int64(1))
			if err != nil {
				fail(w, http.StatusInternalServerError, "warm", err)
				return
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				fail(w, http.StatusInternalServerError, "warm", err)
				return
			}
		}
	}
	fmt.Fprintf(w, "warm %d connections\n", len(conns))
}

func (s *shop) item(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := s.query(r.Context(), itemQuery, idParam(id))
	if err != nil {
		fail(w, http.StatusInternalServerError, "query", err)
		return
	}
	fmt.Fprintf(w, "item %s: %d rows\n", id, n)
}

func (s *shop) nPlusOne(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	total := 0
	for i := range nPlusOne {
		// Users 5..10: different values of one statement (7 and 8 have orders).
		n, err := s.query(r.Context(), byUserQuery, int64(5+i))
		if err != nil {
			fail(w, http.StatusInternalServerError, "query", err)
			return
		}
		total += n
	}
	fmt.Fprintf(w, "n_plus_one %s: %d rows\n", id, total)
}

func (s *shop) call(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.get(r.Context(), "/sleep/"+id+"?ms=30"); err != nil {
		fail(w, http.StatusBadGateway, "downstream", err)
		return
	}
	fmt.Fprintf(w, "call %s\n", id)
}

func (s *shop) mixed(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.query(r.Context(), itemQuery, idParam(id)); err != nil {
		fail(w, http.StatusInternalServerError, "query", err)
		return
	}
	if err := s.get(r.Context(), "/sleep/"+id+"?ms=20"); err != nil {
		fail(w, http.StatusBadGateway, "downstream", err)
		return
	}
	fmt.Fprintf(w, "mixed %s\n", id)
}

func (s *shop) fanout(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx := r.Context()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, suffix := range []string{"-a", "-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.get(ctx, "/sleep/"+id+suffix+"?ms=30")
		}()
	}
	_, qerr := s.query(ctx, itemQuery, idParam(id))
	wg.Wait()
	if qerr != nil {
		fail(w, http.StatusInternalServerError, "query", qerr)
		return
	}
	for _, err := range errs {
		if err != nil {
			fail(w, http.StatusBadGateway, "downstream", err)
			return
		}
	}
	fmt.Fprintf(w, "fanout %s\n", id)
}

func (s *shop) sequential(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.get(r.Context(), "/sleep/"+id+"?ms=30"); err != nil {
		fail(w, http.StatusBadGateway, "downstream", err)
		return
	}
	if _, err := s.pool.Exec(r.Context(), "SELECT pg_sleep(0.03)"); err != nil {
		fail(w, http.StatusInternalServerError, "query", err)
		return
	}
	fmt.Fprintf(w, "sequential %s\n", id)
}

func newDownstream() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sleep/{id...}", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			ms = 0
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "slept %d ms for %s\n", ms, r.PathValue("id"))
	})
	return mux
}
