-- Sends each pre-signed body once: thread N of T takes lines N, N+T, N+2T, ...
-- of the file named by BENCH_BODIES, so no token is sent twice in a run.
local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   table.insert(threads, thread)
   counter = counter + 1
end

function init(args)
   local path = os.getenv("BENCH_BODIES")
   local total = tonumber(os.getenv("BENCH_THREADS"))
   bodies = {}
   local index = 0
   for line in io.lines(path) do
      if index % total == id then
         bodies[#bodies + 1] = line
      end
      index = index + 1
   end
   position = 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   position = position + 1
   if position > #bodies then
      position = 1
   end
   return wrk.format(nil, nil, nil, bodies[position])
end
