# Ruby: reads JSON parameters from stdin.
require "json"
params = JSON.parse($stdin.read)
puts JSON.generate({ "language" => "ruby", "greeting" => "Hello, #{params["name"]}", "version" => RUBY_VERSION })
