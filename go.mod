module github.com/sipside/sipside

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/rabbitmq/amqp091-go v1.16.0
	github.com/valyala/fastjson v1.6.10
	golang.org/x/sync v0.25.0
)
