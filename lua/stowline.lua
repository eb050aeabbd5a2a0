-- stowline: tell the stowline ingest service that a study is stable.
--
-- Install: add this file to Orthanc's "LuaScripts" and a section to the
-- Orthanc configuration (Orthanc expands ${VAR} from its environment):
--
--   "Stowline": {
--     "IngestUrl":   "http://stowline:8080/webhooks/orthanc",
--     "IngestToken": "${STOWLINE_INGEST_TOKEN}",
--     "Source":      "orthanc-main"   // optional, defaults to Orthanc's "Name"
--     // "Priority": "low"           // optional: stat, routine or low for every
--                                    // study of this Orthanc, which the ingest's
--                                    // PRIORITY_RULE then does not see; low only
--                                    // for one that holds a migration
--                                    // (docs/priority-lanes.md)
--   }
--
-- (Orthanc's configuration takes // comments, not Lua's --.)
--
-- A site may pick each study's priority lane itself: define, in another
-- Lua script of the same Orthanc, a function
--
--   function StowlinePriority(studyId, tags, metadata)
--     if string.find(tags['StudyDescription'] or '', 'STAT') then return 'stat' end
--     return nil   -- nil or '': Stowline.Priority, else PRIORITY_RULE or routine
--   end
--
-- Without either, the event names no priority and the ingest's
-- PRIORITY_RULE (or routine) decides (docs/priority-lanes.md).
--
-- Orthanc runs every LuaScripts file in one Lua context: a site script
-- that also defines OnStableStudy replaces this one's (or this one
-- replaces it, whichever loads last), silently. Merge them instead: call
-- both bodies from one OnStableStudy.
--
-- Several Orthanc processes sharing one database run this script each,
-- with the same Stowline.Source. Stability is each process's own memory,
-- so the script posts a study only once its LastUpdate is before
-- Orthanc's current second (GET /tools/now, read within Orthanc), as the
-- reconciler does: an instance another process stores later then gets a
-- later LastUpdate, and a new event (docs/guarantees.md, Limits).
--
-- The script stays tiny on purpose: Orthanc's Lua has no retry and forgets
-- stability on restart, so stowline also reconciles from Orthanc's /changes
-- feed. A failed post only logs a warning; it never raises, so Orthanc's
-- Lua context keeps working for every later study.

-- The ingest answers in milliseconds; while the post waits, Orthanc's
-- REST API waits with it (its Lua runs one callback at a time), so a
-- hung ingest must not hold it long. A post that times out loses
-- nothing: the reconciler finds the study in the change log.
local HTTP_TIMEOUT_SECONDS = 3

-- A source name becomes a NATS subject token: keep letters, digits, '_'
-- and '-' (the ingest rejects anything else).
local function sourceName(configured, orthancName)
  local name = configured
  if name == nil or name == '' then
    name = orthancName
  end
  if name == nil or name == '' then
    name = 'orthanc'
  end
  -- An explicit class: %w follows the C locale, which Orthanc sets from
  -- its Locale option, and a Latin-1 one would keep a byte such as ü that
  -- the ingest's events.DefaultSourceName turns into '-' (every post
  -- then refused as of an invalid source).
  name = string.gsub(name, '[^A-Za-z0-9_%-]', '-')
  return string.sub(name, 1, 64)
end

-- jsonString quotes s for JSON. The event is built by hand because
-- DumpJson(t, true) turns numbers into strings and DumpJson(t, false)
-- turns number-like strings (a UID such as "1.2") into numbers.
local function jsonString(s)
  s = string.gsub(tostring(s), '[%c"\\]', function(c)
    return string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function settings()
  local config = GetOrthancConfiguration()
  local section = config['Stowline']
  if type(section) ~= 'table' then
    return nil, 'the "Stowline" section is missing from the Orthanc configuration'
  end
  local url = section['IngestUrl']
  local token = section['IngestToken']
  if url == nil or url == '' then
    return nil, '"Stowline.IngestUrl" is not set'
  end
  if token == nil or token == '' then
    -- Orthanc makes a ${VAR} of its configuration empty when VAR is not
    -- in its environment: the configuration then looks set.
    return nil, '"Stowline.IngestToken" is not set or empty (if the configuration has it as' ..
      ' "${STOWLINE_INGEST_TOKEN}", that variable is not set in Orthanc\'s environment)'
  end
  if string.find(url, '^%s*%a[%w+.-]*://[^/?#]*@') then
    -- Orthanc logs the URL of a failed post whole.
    return nil, '"Stowline.IngestUrl" holds a user or password: remove it (the ingest' ..
      ' authenticates the script by IngestToken, and Orthanc would log it with any failed post)'
  end
  return {
    url = url,
    token = token,
    source = sourceName(section['Source'], config['Name']),
    priority = section['Priority'],
    -- Orthanc's own default for its HTTP clients.
    httpTimeout = tonumber(config['HttpTimeout']) or 60,
    -- Orthanc sends Lua's requests through its HttpProxy too (its URL may
    -- hold a password: only whether it is set is kept).
    proxied = type(config['HttpProxy']) == 'string' and config['HttpProxy'] ~= '',
  }
end

-- post sends the event within HTTP_TIMEOUT_SECONDS where Orthanc has
-- SetHttpTimeout (1.12.7 on Debian trixie has it; 1.10.1 on bookworm does
-- not, and there Orthanc's "HttpTimeout" applies). SetHttpTimeout sets the
-- HTTP client every Lua script of this Orthanc shares, so Orthanc's
-- "HttpTimeout" is put back after the post: another script's call (an
-- upload elsewhere, a RIS) must not inherit 3 s. Orthanc has no getter: a
-- site script that sets a time-out of its own sets it before its calls.
local function post(s, event)
  local headers = {
    ['Content-Type'] = 'application/json',
    ['Authorization'] = 'Bearer ' .. s.token,
  }
  if SetHttpTimeout == nil then
    return HttpPost(s.url, event, headers)
  end
  SetHttpTimeout(HTTP_TIMEOUT_SECONDS)
  local ok, answer = pcall(HttpPost, s.url, event, headers)
  SetHttpTimeout(s.httpTimeout)
  if not ok then
    error(answer, 0)
  end
  return answer
end

local LANES = { stat = true, routine = true, low = true }

-- lane returns p as a lane name (stat, routine or low, in any case), or
-- nil with a warning naming where the value came from: the ingest would
-- refuse the whole event for an unknown one.
local function lane(p, from, studyId)
  if p == nil or p == '' then
    return nil
  end
  local name = string.lower(tostring(p))
  if LANES[name] then
    return name
  end
  print('stowline: study ' .. studyId .. ': ' .. from .. ' gave priority "' .. tostring(p) ..
    '", not stat, routine or low; ignored')
  return nil
end

-- priority is the study's lane: the site's StowlinePriority hook, else
-- Stowline.Priority, else none (the ingest decides). A failing hook, or
-- an unknown value, leaves the choice to the next.
local function priority(s, studyId, tags, metadata)
  if type(StowlinePriority) == 'function' then
    local ok, p = pcall(StowlinePriority, studyId, tags, metadata)
    if ok then
      local name = lane(p, 'StowlinePriority', studyId)
      if name ~= nil then
        return name
      end
    else
      print('stowline: StowlinePriority failed for study ' .. studyId .. ': ' .. tostring(p))
    end
  end
  return lane(s.priority, 'Stowline.Priority', studyId)
end

-- A time as Orthanc writes it (LastUpdate, /tools/now): UTC to the
-- second, fixed width, so that two compare as strings.
local ORTHANC_TIME = '%d%d%d%d%d%d%d%dT%d%d%d%d%d%d'

local function isOrthancTime(s)
  return type(s) == 'string' and string.find(s, '^' .. ORTHANC_TIME .. '$') ~= nil
end

-- orthancNow is Orthanc's clock (it answers its own Lua with text,
-- 20261206T035311, on 1.10 and 1.12), or nil when it cannot be read.
local function orthancNow()
  local ok, answer = pcall(RestApiGet, '/tools/now', true)
  if not ok or type(answer) ~= 'string' then
    return nil
  end
  return string.match(answer, '^%s*"?(' .. ORTHANC_TIME .. ')"?%s*$')
end

-- readStudy is the study as Orthanc reports it now, or nil when it
-- cannot be read (deleted since, or a Lua error).
local function readStudy(studyId)
  local ok, answer = pcall(RestApiGet, '/studies/' .. studyId, true)
  if not ok or type(answer) ~= 'string' or answer == '' then
    return nil
  end
  local parsed, study = pcall(ParseJson, answer)
  if parsed and type(study) == 'table' then
    return study
  end
  return nil
end

-- postStableStudy posts the study's event unless an instance may still
-- join it within the second of its LastUpdate: LastUpdate has one-second
-- resolution, so the event would carry the ID of the study once
-- complete, and that study's own event would be dropped as its
-- duplicate, the late instance never sent. Two cases:
--
-- Unstable again. Orthanc runs the callbacks one at a time: behind a slow
-- post or a site script, a study may get an instance (a late dose
-- report) after its StableStudy was queued. Orthanc sends another
-- StableStudy once the study is stable again.
--
-- Updated in Orthanc's current second. Stability is each Orthanc
-- process's own memory: with several processes sharing one database,
-- another may still be storing the study. Orthanc's clock is read before
-- the study: when the study's LastUpdate is before the clock's second,
-- an instance stored after the read gets a later one, and the complete
-- study's event is a new one. The reconciler makes the same check (internal/reconcile, settled)
-- and publishes the study from this StableStudy change once the second
-- has passed; the process that stored the study's last instance posts at
-- its own StableStudy.
--
-- A study or clock that cannot be read posts as before: the reconciler's
-- copy is then the fallback, as for any post.

-- What queues a study whose post failed: the ingest's reconciler, when
-- RECONCILE_ENABLED (the default) and once it has run; a study stable
-- before its first start, or with it off, only an audit.
local catchUp = 'the ingest\'s reconciler queues it later; with RECONCILE_ENABLED=false, or before the' ..
  ' ingest first ran, run forwarder audit --enqueue'

local function postStableStudy(studyId, tags, metadata)
  local s, problem = settings()
  if s == nil then
    print('stowline: study ' .. studyId .. ' not announced: ' .. problem)
    return
  end
  local now = orthancNow()
  local study = readStudy(studyId)
  if study ~= nil and study['IsStable'] == false then
    print('stowline: study ' .. studyId .. ' received instances since it was stable; announced' ..
      ' when it is stable again')
    return
  end
  -- The LastUpdate read after the clock (the callback's was read before).
  local lastUpdate = metadata['LastUpdate']
  if study ~= nil and isOrthancTime(study['LastUpdate']) then
    lastUpdate = study['LastUpdate']
  end
  if now ~= nil and isOrthancTime(lastUpdate) and lastUpdate >= now then
    print('stowline: study ' .. studyId .. ' was last updated at ' .. lastUpdate ..
      ', not before Orthanc\'s clock (' .. now .. '): another Orthanc process sharing the' ..
      ' database may still store an instance of it unseen; announced later, by the reconciler' ..
      ' once that second has passed, or at its next StableStudy')
    return
  end
  local event = '{"type":"orthanc.study.stable","version":1' ..
    ',"source":' .. jsonString(s.source) ..
    ',"orthancStudyId":' .. jsonString(studyId) ..
    ',"studyInstanceUid":' .. jsonString(tags['StudyInstanceUID'] or '') ..
    ',"lastUpdate":' .. jsonString(lastUpdate or '')
  local p = priority(s, studyId, tags, metadata)
  if p ~= nil then
    event = event .. ',"priority":' .. jsonString(p)
  end
  event = event .. '}'
  local answer = post(s, event)
  -- Orthanc 1.10.1 and 1.12.7 return nil when they could not connect or
  -- the time-out passed, and "" when the server answered with an HTTP
  -- error (lua/stowline_test.go checks both); a Lua error raised instead
  -- is caught by the pcall below (a C++ exception, as an empty headers
  -- table raises on 1.10.1, would not be: the table is never empty). The
  -- ingest always answers with a body, so "" is an error.
  if answer == nil then
    local within = 'Orthanc\'s HttpTimeout'
    if SetHttpTimeout ~= nil then
      within = HTTP_TIMEOUT_SECONDS .. ' s'
    end
    local via = ''
    if s.proxied then
      via = ' through Orthanc\'s HttpProxy (if that proxy cannot reach the ingest, add the' ..
        ' ingest\'s host to NO_PROXY in Orthanc\'s environment)'
    end
    -- A certificate Orthanc does not trust fails the same way.
    if string.lower(string.sub(s.url, 1, 6)) == 'https:' then
      via = via .. ' (or Orthanc does not trust its certificate: name the CA that signed it' ..
        ' in Orthanc\'s HttpsCACertificates)'
    end
    print('stowline: study ' .. studyId .. ' not announced: cannot reach ' .. s.url .. via ..
      ' or no answer within ' .. within .. ' (' .. catchUp .. ')')
  elseif answer == '' then
    -- The ingest logs every refusal of its webhook, but not a request to
    -- a path it does not serve, and a proxy's error never reaches it.
    print('stowline: study ' .. studyId .. ' not announced: ' .. s.url ..
      ' answered with an HTTP error (a wrong IngestToken, an event refused, the rate limit,' ..
      ' JetStream unavailable or the ingest still waiting for NATS at its start: the ingest' ..
      ' logs why; if it logged nothing, the post did not' ..
      ' reach its webhook: check the path of IngestUrl and any proxy in between; ' ..
      catchUp .. ')')
  end
end

function OnStableStudy(studyId, tags, metadata)
  local ok, err = pcall(postStableStudy, studyId, tags, metadata)
  if not ok then
    print('stowline: study ' .. tostring(studyId) .. ' not announced: ' .. tostring(err))
  end
end
