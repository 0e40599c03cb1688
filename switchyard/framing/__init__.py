"""Wire framing shared by the gateway's translators and the provider simulator: Server-Sent
Events (`sse`) and the AWS event-stream binary framing (`eventstream`)."""
