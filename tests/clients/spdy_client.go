// spdy_client drives a crius streaming URL over SPDY/3.1 with moby/spdystream,
// the SPDY implementation client-go and the kubelet use (an implementation
// we did not write), and prints what it saw as one JSON object on stdout.
//
//	spdy_client -mode exec -url URL [-stdin TEXT] [-tty] [-resize WxH] [-stderr] [-protocol P]
//	    -> {"stdout": ..., "stderr": ..., "status": <metav1.Status>, "protocol": P}
//	spdy_client -mode portforward -url URL -port N -send TEXT
//	    -> {"received": ..., "error": ...}
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdy_client: "+format+"\n", args...)
	os.Exit(1)
}

// upgrade performs the HTTP/1.1 upgrade to SPDY/3.1 and returns the
// connection and the negotiated subprotocol.
func upgrade(rawURL string, protocols []string) (net.Conn, string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		fail("bad url: %v", err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", rawURL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		fail("write request: %v", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, req)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("{\"http_status\": %d, \"body\": %q}\n", resp.StatusCode, string(body))
		os.Exit(0)
	}
	if reader.Buffered() > 0 {
		fail("server sent frames before the client spoke")
	}
	return conn, resp.Header.Get("X-Stream-Protocol-Version")
}

func open(conn *spdystream.Connection, headers http.Header) *spdystream.Stream {
	stream, err := conn.CreateStream(headers, nil, false)
	if err != nil {
		fail("create stream %v: %v", headers, err)
	}
	if err := stream.WaitTimeout(10 * time.Second); err != nil {
		fail("stream %v not replied: %v", headers, err)
	}
	return stream
}

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func runExec(rawURL, stdinText string, sendStdin, tty, wantStderr bool, resize, protocol string) {
	protocols := []string{"v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"}
	if protocol != "" {
		protocols = []string{protocol}
	}
	raw, negotiated := upgrade(rawURL, protocols)
	conn, err := spdystream.NewConnection(raw, false)
	if err != nil {
		fail("spdy connection: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)

	errorStream := open(conn, header("streamType", "error"))
	var stdin, stdout, stderr, resizeStream *spdystream.Stream
	if sendStdin {
		stdin = open(conn, header("streamType", "stdin"))
	}
	stdout = open(conn, header("streamType", "stdout"))
	if wantStderr && !tty {
		stderr = open(conn, header("streamType", "stderr"))
	}
	if tty {
		resizeStream = open(conn, header("streamType", "resize"))
	}

	var wg sync.WaitGroup
	var outBuf, errBuf, statusBuf []byte
	read := func(s *spdystream.Stream, into *[]byte) {
		defer wg.Done()
		data, _ := io.ReadAll(s)
		*into = data
	}
	wg.Add(2)
	go read(stdout, &outBuf)
	go read(errorStream, &statusBuf)
	if stderr != nil {
		wg.Add(1)
		go read(stderr, &errBuf)
	}
	if resizeStream != nil && resize != "" {
		var w, h uint16
		fmt.Sscanf(resize, "%dx%d", &w, &h)
		json.NewEncoder(resizeStream).Encode(map[string]uint16{"Width": w, "Height": h})
		time.Sleep(300 * time.Millisecond)
	}
	if stdin != nil {
		io.Copy(stdin, strings.NewReader(stdinText))
		if !tty {
			stdin.Close()
		}
	}
	wg.Wait()
	var status interface{}
	if len(statusBuf) > 0 {
		if err := json.Unmarshal(statusBuf, &status); err != nil {
			status = string(statusBuf)
		}
	}
	out, _ := json.Marshal(map[string]interface{}{
		"stdout":   string(outBuf),
		"stderr":   string(errBuf),
		"status":   status,
		"protocol": negotiated,
	})
	fmt.Println(string(out))
	conn.Close()
}

func runPortForward(rawURL string, port int, send string) {
	raw, negotiated := upgrade(rawURL, []string{"portforward.k8s.io"})
	if negotiated != "portforward.k8s.io" {
		fail("negotiated %q", negotiated)
	}
	conn, err := spdystream.NewConnection(raw, false)
	if err != nil {
		fail("spdy connection: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)
	p := fmt.Sprint(port)
	errorStream := open(conn, header("streamType", "error", "port", p, "requestID", "0"))
	errorStream.Close()
	data := open(conn, header("streamType", "data", "port", p, "requestID", "0"))
	var wg sync.WaitGroup
	var errBuf []byte
	wg.Add(1)
	go func() {
		defer wg.Done()
		errBuf, _ = io.ReadAll(errorStream)
	}()
	io.Copy(data, strings.NewReader(send))
	data.Close()
	received, _ := io.ReadAll(data)
	wg.Wait()
	out, _ := json.Marshal(map[string]string{"received": string(received), "error": string(errBuf)})
	fmt.Println(string(out))
	conn.Close()
}

func main() {
	mode := flag.String("mode", "exec", "exec or portforward")
	rawURL := flag.String("url", "", "streaming URL")
	stdinText := flag.String("stdin", "", "text to send on stdin")
	sendStdin := flag.Bool("with-stdin", false, "open a stdin stream")
	tty := flag.Bool("tty", false, "tty session (resize stream, no stderr)")
	wantStderr := flag.Bool("stderr", false, "open a stderr stream")
	resize := flag.String("resize", "", "terminal size WxH sent on the resize stream")
	protocol := flag.String("protocol", "", "offer only this subprotocol")
	port := flag.Int("port", 0, "port to forward")
	send := flag.String("send", "", "bytes to send to the forwarded port")
	flag.Parse()
	switch *mode {
	case "exec":
		runExec(*rawURL, *stdinText, *sendStdin, *tty, *wantStderr, *resize, *protocol)
	case "portforward":
		runPortForward(*rawURL, *port, *send)
	default:
		fail("unknown mode %q", *mode)
	}
}
