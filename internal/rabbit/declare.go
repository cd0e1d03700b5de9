package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DeclareMode says what sipside may do about an exchange or queue it needs.
type DeclareMode string

// Declare modes. In a Kazoo-style deployment the platform owns the exchanges:
// what exists is used as it is, whatever its flags and arguments.
const (
	// DeclareAuto checks passively and creates with the configured settings only
	// when the broker says the thing does not exist.
	DeclareAuto DeclareMode = "auto"
	// DeclarePassive only checks: a missing exchange or queue is an error.
	DeclarePassive DeclareMode = "passive"
	// DeclareCreate declares with the configured settings; an existing one with
	// other settings is an error (406 from the broker).
	DeclareCreate DeclareMode = "create"
)

// ParseDeclareMode checks a config value; "" is auto.
func ParseDeclareMode(s string) (DeclareMode, error) {
	switch DeclareMode(s) {
	case "", DeclareAuto:
		return DeclareAuto, nil
	case DeclarePassive, DeclareCreate:
		return DeclareMode(s), nil
	}
	return "", fmt.Errorf("%q: want auto (use what exists, create what does not), passive (never create) or create (declare with these settings)", s)
}

// Queue types of x-queue-type.
const (
	QueueClassic = "classic"
	QueueQuorum  = "quorum"
	QueueStream  = "stream"
)

// Exchange is an exchange as sipside would create it.
type Exchange struct {
	Name    string
	Type    string // direct, topic, fanout, headers
	Durable bool
	Args    amqp.Table
}

// Queue is a queue as sipside would create it. An empty Name asks the broker for
// a server-named queue, exclusive to the connection: it is always created.
type Queue struct {
	Name       string
	Type       string // classic (default), quorum or stream
	Durable    bool
	Exclusive  bool
	AutoDelete bool
	Args       amqp.Table
}

// CheckQueue refuses settings the broker would refuse for the queue type.
func CheckQueue(q Queue) error {
	switch q.Type {
	case "", QueueClassic:
		return nil
	case QueueQuorum, QueueStream:
	default:
		return fmt.Errorf("queue type %q: want classic, quorum or stream", q.Type)
	}
	switch {
	case q.Name == "":
		return fmt.Errorf("a %s queue needs a name: server-named queues are exclusive to one connection", q.Type)
	case q.Exclusive:
		return fmt.Errorf("a %s queue cannot be exclusive", q.Type)
	case q.AutoDelete:
		return fmt.Errorf("a %s queue cannot be auto-delete", q.Type)
	case !q.Durable:
		return fmt.Errorf("a %s queue is always durable: set durable = true", q.Type)
	}
	return nil
}

// DeclareError is a declare the broker refused, with what to change.
type DeclareError struct {
	Kind string // "exchange" or "queue"
	Name string
	Mode DeclareMode
	Code int    // AMQP reply code: 403, 404, 405, 406, … (0: not a broker refusal)
	Err  error  // the broker's error
	Hint string // what to change
}

func (e *DeclareError) Error() string {
	return fmt.Sprintf("%s %q (declare = %q): %v; %s", e.Kind, e.Name, e.Mode, e.Err, e.Hint)
}

func (e *DeclareError) Unwrap() error { return e.Err }

func declareError(kind, name string, mode DeclareMode, err error) error {
	e := &DeclareError{Kind: kind, Name: name, Mode: mode, Err: err}
	var aerr *amqp.Error
	if errors.As(err, &aerr) {
		e.Code = aerr.Code
	}
	switch e.Code {
	case amqp.NotFound:
		if mode == DeclarePassive {
			e.Hint = "it does not exist: create it, or set declare = \"auto\" to let sipside create it"
		} else {
			e.Hint = "it does not exist and cannot be created here: create it on the broker"
		}
	case amqp.PreconditionFailed:
		e.Hint = "it exists with other settings: make durable, type and arguments match it, or set declare = \"auto\" to use it as it is"
	case amqp.AccessRefused:
		e.Hint = "the broker user lacks permission: grant it (rabbitmqctl set_permissions -p VHOST USER CONF WRITE READ), or create it beforehand and use declare = \"passive\""
	case amqp.ResourceLocked:
		e.Hint = "another connection holds it exclusively"
	default:
		e.Hint = "see the broker's reason"
	}
	return e
}

// predefined reports whether the broker reserves the name: RabbitMQ refuses to
// declare amq.* names (403) even with matching flags, so they are only checked.
func predefined(name string) bool { return strings.HasPrefix(name, "amq.") }

// withChannel runs fn on a throw-away channel: a failed passive declare closes the
// channel it was asked on, and must not close one that carries anything else.
func withChannel(ctx context.Context, conn *amqp.Connection, fn func(ch *amqp.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- fn(ch) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	ch.Close()
	return err
}

func isNotFound(err error) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Code == amqp.NotFound
}

// DeclareExchange makes sure x exists as mode says. The default exchange ("")
// always exists.
func DeclareExchange(ctx context.Context, conn *amqp.Connection, mode DeclareMode, x Exchange) error {
	if x.Name == "" {
		return nil
	}
	typ := x.Type
	if typ == "" {
		typ = amqp.ExchangeTopic
	}
	passive := func(ch *amqp.Channel) error {
		return ch.ExchangeDeclarePassive(x.Name, typ, x.Durable, false, false, false, nil)
	}
	create := func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(x.Name, typ, x.Durable, false, false, false, x.Args)
	}
	err := declare(ctx, conn, mode, predefined(x.Name), passive, create)
	if err != nil {
		return declareError("exchange", x.Name, mode, err)
	}
	return nil
}

// DeclareQueue makes sure q exists as mode says and returns its name (the
// broker's for a server-named queue). A server-named queue is declared on ch,
// the channel that will consume it; checks run on throw-away channels.
func DeclareQueue(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel, mode DeclareMode, q Queue) (string, error) {
	if err := CheckQueue(q); err != nil {
		return "", err
	}
	args := amqp.Table{}
	for k, v := range q.Args {
		args[k] = v
	}
	if q.Type != "" && q.Type != QueueClassic {
		args["x-queue-type"] = q.Type
	}
	if len(args) == 0 {
		args = nil
	}
	if q.Name == "" {
		got, err := ch.QueueDeclare("", false, true, true, false, args)
		if err != nil {
			return "", declareError("queue", "(server-named)", mode, err)
		}
		return got.Name, nil
	}
	passive := func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(q.Name, q.Durable, q.AutoDelete, q.Exclusive, false, nil)
		return err
	}
	create := func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(q.Name, q.Durable, q.AutoDelete, q.Exclusive, false, args)
		return err
	}
	if err := declare(ctx, conn, mode, predefined(q.Name), passive, create); err != nil {
		return "", declareError("queue", q.Name, mode, err)
	}
	return q.Name, nil
}

func declare(ctx context.Context, conn *amqp.Connection, mode DeclareMode, checkOnly bool, passive, create func(*amqp.Channel) error) error {
	if checkOnly || mode == DeclarePassive {
		return withChannel(ctx, conn, passive)
	}
	if mode == DeclareCreate {
		return withChannel(ctx, conn, create)
	}
	err := withChannel(ctx, conn, passive)
	if !isNotFound(err) {
		return err
	}
	return withChannel(ctx, conn, create)
}
