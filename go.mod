module github.com/sipside/sipside

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/rabbitmq/amqp091-go v1.16.0 // indirect
	github.com/valyala/fastjson v1.6.10 // indirect
	golang.org/x/sync v0.25.0 // indirect
)
