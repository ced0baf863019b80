puts "ruby #{RUBY_VERSION}"
