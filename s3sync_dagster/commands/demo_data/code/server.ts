// An HTTP handler that answers health checks, as TypeScript sample code.
import { createServer, IncomingMessage, ServerResponse } from "node:http";

export interface Health {
  status: "ok" | "degraded";
  uptimeSeconds: number;
}

export function health(startedAt: number): Health {
  return { status: "ok", uptimeSeconds: Math.round((Date.now() - startedAt) / 1000) };
}

export function handler(startedAt: number) {
  return (req: IncomingMessage, res: ServerResponse) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(health(startedAt)));
      return;
    }
    res.writeHead(404);
    res.end();
  };
}

createServer(handler(Date.now())).listen(8080);
