// make bench-peers: Portkey's gateway has no listen-address option and binds every interface.
// Preloaded with `node --require`, this makes a listen() given only a port bind 127.0.0.1.
const http = require('http');
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number' && typeof rest[0] !== 'string') {
    return listen.call(this, port, '127.0.0.1', ...rest.filter((a) => typeof a === 'function'));
  }
  return listen.call(this, port, ...rest);
};
