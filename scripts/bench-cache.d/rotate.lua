-- wrk script for scripts/bench-cache: GETs the request paths listed one a
-- line in the file given after `--` (e.g. `/<hash>.narinfo` or
-- `/nar/<filehash>.nar`), in turn, round and round. Each wrk thread starts
-- at its own place in the list. At the end it prints one line, parsed by
-- scripts/bench-cache:
--   RESULT requests=… bytes=… duration_us=… errors=… non2xx=…
-- bytes counts everything read (headers too, and responses cut off at the
-- end of the run).
--
-- With `latency` after the file (one connection per thread only), it also
-- times every request itself, from the moment wrk asks for it to the moment
-- its response is complete (CLOCK_MONOTONIC through LuaJIT's FFI), and adds
-- mean_us=… p50_us=… p99_us=… max_us=… to that line. wrk's own latency
-- statistics are not used: wrk 4 "corrects" them after the run, adding
-- made-up samples for every response slower than twice the average, which
-- inflates the mean and the tail. Timing in Lua costs wrk a few
-- microseconds per request (it then also hands every response to Lua), so
-- request rates come from runs without it.
local threads = {}

function setup(thread)
	thread:set("thread_index", #threads)
	table.insert(threads, thread)
end

local ffi, now_us, started

local function timed_response()
	local t = now_us()
	local us = math.floor(t - started + 0.5)
	hist[us] = (hist[us] or 0) + 1
end

function init(args)
	local file = args[1]
	if not file then
		error("usage: wrk ... -s rotate.lua URL -- PATHS-FILE [latency]")
	end
	reqs = {}
	for line in io.lines(file) do
		if line ~= "" then
			reqs[#reqs + 1] = wrk.format("GET", line)
		end
	end
	if #reqs == 0 then
		error("no request paths in " .. file)
	end
	-- Spread the threads over the list.
	counter = math.floor((thread_index or 0) * #reqs / 2)
	if args[2] == "latency" then
		ffi = require("ffi")
		ffi.cdef [[
			typedef struct { long tv_sec; long tv_nsec; } sf_bench_timespec;
			int clock_gettime(int clock, sf_bench_timespec *tp);
		]]
		local ts = ffi.new("sf_bench_timespec")
		now_us = function()
			ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
			return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
		end
		hist = {}
		response = timed_response
	end
end

function request()
	counter = counter + 1
	if now_us then
		started = now_us()
	end
	return reqs[(counter - 1) % #reqs + 1]
end

function done(summary, latency, requests)
	local e = summary.errors
	local line = string.format("RESULT requests=%d bytes=%d duration_us=%d errors=%d non2xx=%d",
		summary.requests, summary.bytes, summary.duration,
		e.connect + e.read + e.write + e.timeout, e.status)
	-- The timed requests of every thread, merged.
	local counts, n, sum = {}, 0, 0
	for _, thread in ipairs(threads) do
		local h = thread:get("hist")
		if h then
			for us, c in pairs(h) do
				counts[us] = (counts[us] or 0) + c
				n = n + c
				sum = sum + us * c
			end
		end
	end
	if n > 0 then
		local keys = {}
		for us in pairs(counts) do
			keys[#keys + 1] = us
		end
		table.sort(keys)
		local function percentile(p)
			local want, seen = math.ceil(n * p / 100), 0
			for _, us in ipairs(keys) do
				seen = seen + counts[us]
				if seen >= want then
					return us
				end
			end
			return keys[#keys]
		end
		line = line .. string.format(" timed=%d mean_us=%.1f p50_us=%d p99_us=%d max_us=%d",
			n, sum / n, percentile(50), percentile(99), keys[#keys])
	end
	io.write(line .. "\n")
end
