package kazoo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// writeCerts makes a CA and a server and a client certificate signed by it, as PEM
// files readable by the broker's user.
func writeCerts(t *testing.T) (dir string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sipside-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sipside test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for i, name := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".pem", "CERTIFICATE", der)
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		write(name+".key", "PRIVATE KEY", kder)
	}
	return dir
}

// amqps with a private CA and a client certificate the broker insists on.
func TestTLSBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a private RabbitMQ node")
	}
	dir := writeCerts(t)
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "tls", Config: "listeners.ssl.default = 127.0.0.1:" + strconv.Itoa(port) + "\n" +
		"ssl_options.cacertfile = " + filepath.Join(dir, "ca.pem") + "\n" +
		"ssl_options.certfile = " + filepath.Join(dir, "server.pem") + "\n" +
		"ssl_options.keyfile = " + filepath.Join(dir, "server.key") + "\n" +
		"ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"})
	b, _ := startBridge(t, "amqps://guest:guest@127.0.0.1:"+strconv.Itoa(port)+"/", func(c *Config) {
		c.JSONRPC.Listen = nil
		c.AMQP.TLSCA = filepath.Join(dir, "ca.pem")
		c.AMQP.TLSCert = filepath.Join(dir, "client.pem")
		c.AMQP.TLSKey = filepath.Join(dir, "client.key")
	}, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Publish(ctx, PublishRequest{Exchange: "amq.fanout", RoutingKey: "x", Body: []byte("{}")}); err == nil {
		t.Fatal("publish to a fanout with no queue: want unroutable")
	} else if code := toRPCError(err).Code; code != CodeUnroutable {
		t.Fatalf("publish over TLS: %v", err)
	}
	if s := b.mgr.Current(); s == nil || s.Conn.ConnectionState().Version == 0 {
		t.Fatal("not a TLS connection")
	}
}
