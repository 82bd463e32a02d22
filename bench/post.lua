-- wrk script: POST the JSON in $BODY, and count answers whose command did not exit 0.
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"

local failed = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"exit_code":0', 1, true) then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("failed_runs %d\n", failed))
end
